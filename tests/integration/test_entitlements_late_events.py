"""ClickHouseLateEventProbe on the real engine (chdb, or CLICKHOUSE_URL): the late-event question is exact."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from common.clickhouse import ClickHouse
from entitlements.late_events import STORED_AT_INDEX, ClickHouseLateEventProbe, migrate_late_event_index
from ingest.schema import EVENT_COLUMNS, EVENTS_TABLE
from ingest.sink.migrations import migrate_clickhouse
from tests.support.entitlement_fakes import FakeMeters

pytestmark = pytest.mark.integration

T = datetime(2024, 6, 1, tzinfo=UTC)
W = datetime(2024, 7, 1, tzinfo=UTC)  # the snapshot's wall-clock creation


def row(i: int, time: datetime, stored_at: datetime, subject: str = "acme", type_: str = "tokens") -> list[object]:
    return ["ns", f"e{i}", "src", type_, subject, time, '{"v":1}', time, stored_at, "test", 0, i]


@pytest.mark.parametrize("indexed", [False, True], ids=["no-index", "stored-at-index"])
async def test_stored_after_finds_exactly_the_late_events(clickhouse: ClickHouse, indexed: bool) -> None:
    migrate_clickhouse(clickhouse)
    if indexed:
        assert migrate_late_event_index(clickhouse) is True
    meters = FakeMeters()
    meters.add("tokens")
    probe = ClickHouseLateEventProbe(clickhouse, meters)
    rows = [
        row(1, T - timedelta(days=3), W - timedelta(days=1)),  # old, stored before the snapshot
        row(2, T + timedelta(days=1), W + timedelta(days=1)),  # after the snapshot instant: not late
        row(3, T - timedelta(days=2), W + timedelta(days=1), subject="other"),  # another subject
        row(4, T - timedelta(days=2), W + timedelta(days=1), type_="clicks"),  # another event type
    ]
    clickhouse.client.insert(f"{clickhouse.database}.{EVENTS_TABLE}", rows, column_names=list(EVENT_COLUMNS))
    assert await probe.stored_after("ns", "tokens", "acme", before=T, after=W) is False
    late = [row(5, T - timedelta(milliseconds=1), W + timedelta(milliseconds=1))]
    clickhouse.client.insert(f"{clickhouse.database}.{EVENTS_TABLE}", late, column_names=list(EVENT_COLUMNS))
    assert await probe.stored_after("ns", "tokens", "acme", before=T, after=W) is True
    assert await probe.stored_after("ns", "tokens", "acme", before=T - timedelta(milliseconds=1), after=W) is False
    assert await probe.stored_after("ns", "tokens", "acme", before=T, after=W + timedelta(milliseconds=1)) is False
    assert await probe.stored_after("ns", "missing-meter", "acme", before=T, after=W) is True  # unknown: stale


async def test_stored_at_index_skips_granules_stored_before_the_snapshot(clickhouse: ClickHouse) -> None:
    """The skip index is what keeps the probe's cost flat: granules stored before `after` are not read."""
    migrate_clickhouse(clickhouse)
    assert migrate_late_event_index(clickhouse) is True
    assert migrate_late_event_index(clickhouse) is False  # idempotent
    rows = [row(i, T - timedelta(minutes=i), W - timedelta(days=1)) for i in range(1, 20_001)]
    clickhouse.client.insert(f"{clickhouse.database}.{EVENTS_TABLE}", rows, column_names=list(EVENT_COLUMNS))
    probe = ClickHouseLateEventProbe(clickhouse, FakeMeters())
    sql = probe._sql.replace("{ty:String}", "'tokens'").replace("{ns:String}", "'ns'").replace("{s:String}", "'acme'")
    sql = sql.replace("{before:DateTime64(3, 'UTC')}", "toDateTime64('2024-06-01 00:00:00', 3, 'UTC')")
    sql = sql.replace("{after:DateTime64(3, 'UTC')}", "toDateTime64('2024-07-01 00:00:00', 3, 'UTC')")
    plan = "\n".join(str(r[0]) for r in clickhouse.rows("EXPLAIN indexes = 1 " + sql))
    skip = plan[plan.index(STORED_AT_INDEX) :]
    assert "Granules: 0/" in skip, plan
