"""`metergate migrate --print-sql` prints exactly the schema `migrate` builds: run on an empty database, the
printed statements make the same tables, views and columns as the migration itself (real engine)."""

from __future__ import annotations

import pytest

from aggregator.repository import ClickHouseMeterRepository
from common.clickhouse import ClickHouse
from metergate.cli import main
from metergate.migrate import migrate_events_tables

pytestmark = pytest.mark.integration


def schema(ch: ClickHouse, database: str) -> dict[str, object]:
    tables = ch.rows(
        "SELECT name, engine FROM system.tables WHERE database = {db:String} ORDER BY name", parameters={"db": database}
    )
    columns = ch.rows(
        "SELECT table, name, type, default_expression FROM system.columns WHERE database = {db:String} "
        "ORDER BY table, position",
        parameters={"db": database},
    )
    return {"tables": [tuple(r) for r in tables], "columns": [tuple(r) for r in columns]}


def test_the_printed_sql_builds_what_migrate_builds(
    clickhouse: ClickHouse, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    migrate_events_tables(clickhouse)
    ClickHouseMeterRepository(clickhouse).migrate()
    migrated = schema(clickhouse, clickhouse.database)

    printed_db = clickhouse.database + "_printed"
    monkeypatch.setenv("METERGATE_CLICKHOUSE__DATABASE", printed_db)
    monkeypatch.setenv("METERGATE_CLICKHOUSE__URL", "http://nobody:secret@203.0.113.1:8123")  # never contacted
    capsys.readouterr()  # the migration's own log lines
    assert main(["migrate", "--print-sql"]) == 0
    out = capsys.readouterr().out
    statements = [s.strip() for s in out.split(";\n") if s.strip()]
    assert statements[0] == f"CREATE DATABASE IF NOT EXISTS `{printed_db}`"
    assert len(statements) == len(set(statements)), "each statement once"
    try:
        for stmt in statements:
            clickhouse.command(stmt)
        for stmt in statements:  # idempotent: a second run changes nothing
            clickhouse.command(stmt)
        printed = schema(clickhouse, printed_db)
    finally:
        clickhouse.command(f"DROP DATABASE IF EXISTS `{printed_db}` SYNC")
    assert printed["tables"] == migrated["tables"]
    # The same columns, defaults included; the database name appears only where a view names its tables.
    assert printed["columns"] == migrated["columns"]
    assert {"events", "meters", "meter_rollups", "meter_rolls", "sink_ledger"} <= {t[0] for t in migrated["tables"]}
