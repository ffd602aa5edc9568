"""A sink batch written before a meter exists and replayed after the meter's cutover (the sink crashed after
its insert, before committing the offset) is counted once by the meter: by its backfill, not again by the
roller, which reads the stored rows (the replay is dropped from `events` by its token). This was the known
gap of counting at insert, where the replayed block looked new (real ClickHouse engine through chdb, the
sink's own BatchProcessor and ledger)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from aggregator.meter import Meter, parse_meter
from aggregator.repository import ClickHouseMeterRepository
from aggregator.roller import server_now
from common.clickhouse import ClickHouse
from common.clock import FrozenClock
from common.cloudevents import CloudEvent
from ingest.sink.batch import OffsetRange
from ingest.sink.decode import Decoded
from ingest.sink.dedupe import Item
from ingest.sink.migrations import migrate_clickhouse
from ingest.sink.processor import Batch, BatchProcessor
from ingest.sink.rows import RangeId

pytestmark = pytest.mark.integration

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
WINDOW = timedelta(days=32)


def batch_of(start: int, tokens: list[int], at: datetime) -> Batch:
    events = [
        CloudEvent(
            id=f"e{start + i}",
            source="svc",
            type="llm",
            subject="s",
            time=at + timedelta(days=i * 20),
            data=f'{{"tokens":{t}}}',
        )
        for i, t in enumerate(tokens)
    ]  # fmt: skip  (events in two months: the insert splits into two parts)
    items = [Item(start + i, Decoded("acme", e, NOW)) for i, e in enumerate(events)]
    return Batch(RangeId("events", 0, OffsetRange(start, start + len(items) - 1)), f"digest-{start}", items)


def meter_total(ch: ClickHouse, meter_id: str, suffix: str) -> Decimal:
    rows = ch.rows(f"SELECT sumMerge(value) FROM `{ch.database}`.meter_rollup_{meter_id}{suffix}")
    return Decimal(rows[0][0] or 0)


def meter(slug: str) -> Meter:
    body = {"slug": slug, "aggregation": "SUM", "eventType": "llm", "valueProperty": "$.tokens"}
    return parse_meter(body, meter_id=f"{slug}1", namespace="acme", created_at=None)


@pytest.fixture
def repo(clickhouse: ClickHouse) -> ClickHouseMeterRepository:
    migrate_clickhouse(clickhouse)
    repository = ClickHouseMeterRepository(clickhouse)
    repository.migrate()
    return repository


def crash_then_replay(
    clickhouse: ClickHouse, repo: ClickHouseMeterRepository, *, old_meter: bool, roll_between: bool
) -> None:
    """(An old meter exists;) a batch is written and the sink dies before its commit; a new meter is created
    (its backfill counts the batch); the restarted sink replays the recorded range unchanged."""
    if old_meter:
        repo.create(meter("old"))
    first = BatchProcessor(clickhouse, dedupe_window=WINDOW, clock=FrozenClock(NOW))
    batch = batch_of(0, [3, 4], NOW - timedelta(days=30))
    rec = first.record(batch.range_id, batch.digest)
    assert first.write(batch, rec).stored == 2
    if roll_between:
        repo.roller.roll_once()  # the first attempt is rolled up (for the old meter) before the new one exists
    new = meter("new")
    repo.create(new)
    restarted = BatchProcessor(clickhouse, dedupe_window=WINDOW, clock=FrozenClock(NOW + timedelta(minutes=1)))
    (recorded,) = restarted.ledger.recorded_from("events", 0, 0)
    assert recorded == rec
    restarted.write(batch, recorded, replay=True)
    later = batch_of(2, [100], NOW)  # and a batch after both meters: counted live by both
    restarted.write(later, restarted.record(later.range_id, later.digest))
    repo.roller.catch_up(server_now(clickhouse))


@pytest.mark.parametrize("roll_between", [False, True], ids=["no-roll-between", "rolled-between"])
@pytest.mark.parametrize("old_meter", [False, True], ids=["first-meter", "with-an-older-meter"])
def test_a_batch_replayed_across_a_meter_cutover_is_counted_once(
    clickhouse: ClickHouse, repo: ClickHouseMeterRepository, old_meter: bool, roll_between: bool
) -> None:
    crash_then_replay(clickhouse, repo, old_meter=old_meter, roll_between=roll_between)
    assert int(clickhouse.rows(f"SELECT count() FROM {clickhouse.table('events')}")[0][0]) == 3
    for meter_id in ("old1", "new1") if old_meter else ("new1",):
        assert meter_total(clickhouse, meter_id, "") == 107, meter_id
        assert meter_total(clickhouse, meter_id, "_hour") == 107, meter_id
