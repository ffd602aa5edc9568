"""A family's routing view exists once a meter of its family does (an unused view costs every insert),
is created before the meter's route, and comes back at migrate if lost (real ClickHouse engine, chdb)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from aggregator import routing, sql
from aggregator.meter import Meter, parse_meter
from aggregator.repository import ClickHouseMeterRepository
from common.clickhouse import ClickHouse
from tests.support.meter_events import insert

pytestmark = pytest.mark.integration

T = datetime(2025, 3, 1, 12, 0, 30, tzinfo=UTC)


def family_views(ch: ClickHouse) -> set[str]:
    rows = ch.rows(
        "SELECT name FROM system.tables WHERE database = {db:String} AND engine = 'MaterializedView'",
        parameters={"db": ch.database},
    )
    return {str(r[0]) for r in rows} - {routing.ROUTER_VIEW}


def meter(aggregation: str) -> Meter:
    body = {"slug": aggregation.lower(), "aggregation": aggregation, "eventType": "call"}
    if aggregation != "COUNT":
        body["valueProperty"] = "$.n"
    return parse_meter(body, meter_id=uuid.uuid4().hex, namespace="ns")


def minute_value(ch: ClickHouse, m: Meter, merge: str) -> Decimal:
    view = sql.qualified(ch.database, sql.tier_table(m, sql.MINUTE))
    return Decimal(str(ch.rows(f"SELECT {merge}(value) FROM {view}")[0][0]))


def test_family_views_follow_the_meters_and_survive_migrate(clickhouse: ClickHouse) -> None:
    repo = ClickHouseMeterRepository(clickhouse)
    repo.migrate()
    assert family_views(clickhouse) == set()  # no meter: an insert runs the router alone

    total = meter("SUM")
    repo.build(total)
    assert family_views(clickhouse) == {routing.ROLLUPS_TABLE + "_mv"}

    peak = meter("MAX")
    repo.build(peak)
    assert family_views(clickhouse) == {routing.ROLLUPS_TABLE + "_mv", routing.ROLLUPS_TABLE + "_minmax_mv"}

    events = [
        {"id": f"e{i}", "time": T, "subject": "s", "type": "call", "data": {"n": n}} for i, n in enumerate([3, 9, 4])
    ]
    insert(clickhouse, "ns", events, "first")
    assert minute_value(clickhouse, total, "sumMerge") == 16
    assert minute_value(clickhouse, peak, "maxMerge") == 9

    # A database that lost a view gets it back at the next start, before any insert is counted short.
    clickhouse.command(f"DROP VIEW {sql.qualified(clickhouse.database, routing.ROLLUPS_TABLE + '_minmax_mv')} SYNC")
    ClickHouseMeterRepository(clickhouse).migrate()
    assert routing.ROLLUPS_TABLE + "_minmax_mv" in family_views(clickhouse)
    insert(clickhouse, "ns", [{"id": "e9", "time": T, "subject": "s", "type": "call", "data": {"n": 12}}], "second")
    assert minute_value(clickhouse, peak, "maxMerge") == 12
    assert minute_value(clickhouse, total, "sumMerge") == 28
