"""The provisioned Grafana dashboard's SQL runs on the real engine and agrees with the meter query API."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from aggregator import sql
from aggregator.config import parse_config
from aggregator.repository import ClickHouseMeterRepository
from common.clickhouse import ClickHouse
from tests.support.meter_events import insert

pytestmark = pytest.mark.integration

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy/grafana/dashboards/metergate-usage.json"
T0 = datetime(2024, 5, 1, tzinfo=UTC)


def expand(text: str, variables: dict[str, str], database: str) -> str:
    """Grafana's macros and variables, as the ClickHouse plugin would expand them for a wide range."""
    text = re.sub(r"\$__timeInterval\((\w+)\)", r"toStartOfInterval(\1, INTERVAL 3600 second)", text)
    text = re.sub(r"\$__timeFilter\((\w+)\)", r"\1 >= toDateTime(0) AND \1 <= toDateTime('2100-01-01 00:00:00')", text)
    for name, value in variables.items():
        quoted = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"  # Grafana's :sqlstring
        text = text.replace("${" + name + ":raw}", value).replace("${" + name + ":sqlstring}", quoted)
        text = text.replace("${" + name + "}", value)
    assert "'${" not in text, "variables in SQL go through :sqlstring (quoted and escaped), never pasted"
    assert "metergate." not in text  # no database name: the data source's default database is used
    # Grafana's data source sets the default database; the embedded engine here needs the tables qualified.
    return re.sub(r"\bFROM (meters|events|meter_rollup_[\w$]+)", lambda m: f"FROM `{database}`.{m.group(1)}", text)


@pytest.mark.parametrize("aggregation", ["SUM", "COUNT", "UNIQUE_COUNT", "AVG", "MAX", "LATEST"])
def test_dashboard_queries_run_and_match(clickhouse: ClickHouse, aggregation: str) -> None:
    body: dict[str, Any] = {"slug": "m", "aggregation": aggregation, "eventType": "t"}
    if aggregation != "COUNT":
        body["valueProperty"] = "$.v"
    repo = ClickHouseMeterRepository(clickhouse)
    repo.migrate()
    meters = parse_config({"meters": [body]})
    repo.reconcile(meters)
    events = [
        {"id": str(i), "time": T0 + timedelta(minutes=7 * i), "subject": f"s{i % 3}", "type": "t", "data": {"v": i % 5}}
        for i in range(40)
    ]
    insert(clickhouse, "ns", events, "dash")
    repo.roller.roll_once()  # dashboards read the rollups: what the roller has counted (a second or so behind)
    dashboard = json.loads(DASHBOARD.read_text())
    variables: dict[str, str] = {}
    templating = {v["name"]: v["query"]["rawSql"] for v in dashboard["templating"]["list"]}
    options = clickhouse.rows(expand(templating["meter"], variables, clickhouse.database))
    assert [(r[0], r[1]) for r in options] == [(meters[0].id, "m (config)")]
    variables["meter"] = meters[0].id
    # The namespaces come from the meter's hour rollup (a small table), not from the events.
    assert [r[0] for r in clickhouse.rows(expand(templating["namespace"], variables, clickhouse.database))] == ["ns"]
    variables["namespace"] = "ns"
    variables["merge"] = str(clickhouse.rows(expand(templating["merge"], variables, clickhouse.database))[0][0])
    results = []
    for panel in dashboard["panels"]:
        rows = clickhouse.rows(expand(panel["targets"][0]["rawSql"], variables, clickhouse.database))
        assert rows, panel["title"]
        results.append(rows)
    # Top subjects over the whole range equal the exact API answer per subject.
    q = sql.Query(meter=meters[0], namespace="ns", start=T0, end=T0 + timedelta(days=1), group_subject=True)
    text, params = sql.build_query(clickhouse.database, q)
    exact = {r[2]: r[3:] for r in clickhouse.rows(text, parameters=params)}
    top = {r[0]: Decimal(str(r[1])) for r in results[2]}
    for subject, values in exact.items():
        expected = Decimal(values[0]) / values[1] if aggregation == "AVG" else Decimal(values[0])
        assert abs(top[subject] - expected) < Decimal("1e-6"), subject
    # The ingest panel counts every stored event of the namespace.
    assert sum(int(r[2]) for r in results[3]) == len(events)
