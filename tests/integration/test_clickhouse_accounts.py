"""The least-privilege accounts deploy/clickhouse/initdb creates. chdb has no access management (it refuses
CREATE USER), so every statement is parsed by the real engine's parser (EXPLAIN AST, with the password
parameters bound) and the grants are checked against what each service does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from common.clickhouse import ClickHouse

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "clickhouse" / "initdb" / "10-metergate-users.sh"


def statements() -> list[str]:
    text = SCRIPT.read_text()
    sql = re.search(r'^run "\n(?P<sql>.*?)^"\n', text, re.S | re.M)
    assert sql is not None, "the script's SQL block"
    body = sql["sql"].replace("\\`", "`").replace("${DB}", "metergate")
    return [s.strip() for s in body.split(";") if s.strip()]


def grants() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for stmt in statements():
        m = re.fullmatch(r"GRANT (?P<privs>.+) ON `metergate`\.\* TO (?P<user>\w+)", stmt)
        if m:
            out.setdefault(m["user"], set()).update(p.strip() for p in m["privs"].split(","))
    return out


def test_every_statement_parses_on_the_engine(clickhouse: ClickHouse) -> None:
    stmts = statements()
    assert len(stmts) >= 10
    params = {"api": "a'pw\\\\x", "worker": "w", "grafana": "g"}  # quotes and backslashes stay data
    for stmt in stmts:
        rows = clickhouse.rows(f"EXPLAIN AST {stmt}", parameters=params)
        assert rows, stmt
    assert not any("IDENTIFIED" in s and "'" in s for s in stmts), "passwords are parameters, never SQL text"


def test_each_account_gets_what_its_service_does_and_no_more() -> None:
    g = grants()
    assert g["metergate_grafana"] == {"SELECT"}
    assert g["metergate_worker"] == {"SELECT", "INSERT"}
    # The api creates, changes and deletes meters at runtime: views and row deletes, no table DDL.
    assert g["metergate_api"] == {"SELECT", "INSERT", "ALTER DELETE", "CREATE VIEW", "DROP VIEW", "DROP TABLE"}
    readonly = [s for s in statements() if s.startswith("ALTER USER metergate_grafana")]
    assert readonly
    assert "SETTINGS PROFILE metergate_readonly" in readonly[0]
    assert "CREATE SETTINGS PROFILE IF NOT EXISTS metergate_readonly SETTINGS readonly = 2" in statements()
