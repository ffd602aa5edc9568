"""The usage reader's late-event question (`stored_after`) on the real engine (chdb, or CLICKHOUSE_URL): exact."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from aggregator.repository import ClickHouseMeterRepository
from aggregator.service import MeterService
from aggregator.usage import ClickHouseUsageReader
from common.clickhouse import ClickHouse
from common.events_table import EVENT_COLUMNS, EVENTS_TABLE
from ingest.sink.migrations import migrate_clickhouse

pytestmark = pytest.mark.integration

T = datetime(2024, 6, 1, tzinfo=UTC)
W = datetime(2024, 7, 1, tzinfo=UTC)  # the snapshot's wall-clock creation


def row(i: int, time: datetime, stored_at: datetime, subject: str = "acme", type_: str = "tokens") -> list[object]:
    return ["ns", f"e{i}", "src", type_, subject, time, '{"v":1}', time, stored_at, "test", 0, i]


async def test_stored_after_finds_exactly_the_late_events(clickhouse: ClickHouse) -> None:
    migrate_clickhouse(clickhouse)
    meters = MeterService(ClickHouseMeterRepository(clickhouse))
    await meters.start()
    await meters.create("ns", {"slug": "tokens", "aggregation": "COUNT", "eventType": "tokens"})
    probe = ClickHouseUsageReader(meters)
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
    assert await probe.stored_after("ns", "tokens", ("other", "acme"), before=T, after=W) is True  # a customer
    assert await probe.stored_after("ns", "tokens", (), before=T, after=W) is False
