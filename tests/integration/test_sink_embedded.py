"""The embedded log: publish stores, a repeated publish or a replayed range stores nothing twice."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from common.clickhouse import ClickHouse
from common.clock import FrozenClock
from common.cloudevents import CloudEvent
from common.errors import Unavailable
from ingest.settings import SinkSettings
from ingest.sink.batch import OffsetRange
from ingest.sink.decode import Decoded
from ingest.sink.dedupe import Item
from ingest.sink.embedded import EMBEDDED_PARTITION, EMBEDDED_TOPIC, EmbeddedLog, items_digest
from ingest.sink.processor import Batch, BatchProcessor
from ingest.sink.rows import RangeId

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def event(i: int, *, tokens: int = 1, subject: str = "customer-1") -> CloudEvent:
    return CloudEvent(
        id=f"evt-{i}",
        source="svc",
        type="llm",
        subject=subject,
        time=T0 + timedelta(seconds=i),
        data=f'{{"tokens":{tokens}}}',
    )


def stored(ch: ClickHouse) -> list[tuple[str, str, str, str]]:
    return [
        (r[0], r[1], r[2], r[3])
        for r in ch.rows(f"SELECT namespace, source, id, data FROM {ch.table('events')} ORDER BY namespace, id")
    ]


async def test_publish_stores_once_and_reports_conflicts(clickhouse: ClickHouse) -> None:
    log = EmbeddedLog(clickhouse, SinkSettings(batch_size=7), clock=FrozenClock(T0))
    await log.start()
    batch = [event(i) for i in range(20)]
    await log.publish("acme", batch, T0)
    assert len(stored(clickhouse)) == 20

    # the same events again (a client retry), plus in-batch duplicates and one conflicting payload
    await log.publish("acme", [*batch[:10], batch[3], event(5, tokens=99), event(20)], T0)
    rows = stored(clickhouse)
    assert len(rows) == 21
    assert ("acme", "svc", "evt-5", '{"tokens":1}') in rows
    assert log.counters.conflicts == 1
    assert log.counters.duplicates == 11
    letters = clickhouse.rows(f"SELECT kind, reason, offset FROM {clickhouse.table('dead_letters')}")
    assert len(letters) == 1
    assert letters[0][0] == "conflict"
    assert "data" in letters[0][1]

    # another namespace is another key space
    await log.publish("other", batch[:3], T0)
    assert len(stored(clickhouse)) == 24
    await log.close()


async def test_offsets_continue_after_restart_and_replay_is_idempotent(clickhouse: ClickHouse) -> None:
    first = EmbeddedLog(clickhouse, SinkSettings(), clock=FrozenClock(T0))
    await first.publish("acme", [event(i) for i in range(5)], T0)
    await first.close()
    second = EmbeddedLog(clickhouse, SinkSettings(), clock=FrozenClock(T0 + timedelta(hours=1)))
    await second.publish("acme", [event(i) for i in range(5, 8)], T0)
    offsets = [
        int(r[0])
        for r in clickhouse.rows(f"SELECT ingest_offset FROM {clickhouse.table('events')} ORDER BY ingest_offset")
    ]
    assert offsets == list(range(8))

    # Replay the recorded range 5..7 exactly as a crash after the insert would: same record, same rows.
    processor = BatchProcessor(clickhouse, dedupe_window=timedelta(days=32), clock=FrozenClock(T0))
    (rec,) = processor.ledger.recorded_from(EMBEDDED_TOPIC, EMBEDDED_PARTITION, 5)
    items = [Item(5 + i, Decoded("acme", event(5 + i), T0)) for i in range(3)]
    batch = Batch(RangeId(EMBEDDED_TOPIC, EMBEDDED_PARTITION, OffsetRange(5, 7)), items_digest(items), items)
    assert rec.digest == batch.digest
    before = clickhouse.rows(f"SELECT * FROM {clickhouse.table('events')} ORDER BY ingest_offset")
    result = processor.write(batch, rec, replay=True)
    assert result.stored == 3  # its own rows are excluded from the key check, so the rows are rebuilt ...
    after = clickhouse.rows(f"SELECT * FROM {clickhouse.table('events')} ORDER BY ingest_offset")
    assert after == before  # ... and ClickHouse drops the identical insert under the same token


async def test_concurrent_publishes_are_grouped_and_stored_once(clickhouse: ClickHouse) -> None:
    log = EmbeddedLog(clickhouse, SinkSettings(), clock=FrozenClock(T0))
    await log.start()
    # 20 requests of 50 events; neighbours overlap by 10 events (client retries of part of a batch)
    requests = [[event(i) for i in range(40 * r, 40 * r + 50)] for r in range(20)]
    await asyncio.gather(*(log.publish("acme", batch, T0) for batch in requests))
    rows = stored(clickhouse)
    assert len(rows) == 40 * 19 + 50
    assert len({(r[0], r[1], r[2]) for r in rows}) == len(rows)
    assert log.counters.duplicates == 19 * 10
    assert log.counters.batches < len(requests)  # group commit: fewer writes than requests
    await log.close()


async def test_publish_fails_while_clickhouse_fails_then_a_retry_stores_once(clickhouse: ClickHouse) -> None:
    log = EmbeddedLog(clickhouse, SinkSettings(retry_backoff_initial_ms=10, retry_backoff_max_ms=20))
    await log.start()
    await log.publish("acme", [event(0)], T0)
    clickhouse.command(f"DETACH TABLE {clickhouse.table('events')}")
    try:
        with pytest.raises(Unavailable):
            await log.publish("acme", [event(1), event(2)], T0)
    finally:
        clickhouse.command(f"ATTACH TABLE {clickhouse.table('events')}")
    await log.publish("acme", [event(1), event(2)], T0)
    await log.publish("acme", [event(1), event(2)], T0)
    assert [r[2] for r in stored(clickhouse)] == ["evt-0", "evt-1", "evt-2"]
    await log.close()


@pytest.mark.parametrize(
    "at",
    [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=UTC),
        datetime(2026, 3, 1, 12, 0, 0, 37000, tzinfo=UTC),
        datetime(2026, 3, 1, 12, 0, 0, 999000, tzinfo=UTC),
        datetime(2199, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
    ],
)
async def test_every_millisecond_is_stored_exactly(clickhouse: ClickHouse, at: datetime) -> None:
    """The insert block carries DateTime64 columns as decimal seconds: no instant may move."""
    log = EmbeddedLog(clickhouse, SinkSettings(), clock=FrozenClock(at))
    e = CloudEvent(id="edge", source="svc", type="llm", subject="s", time=at, data="null")
    await log.publish("acme", [e], at)
    await log.close()
    expected = (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    rows = clickhouse.rows(
        "SELECT toUnixTimestamp64Milli(time), toUnixTimestamp64Milli(ingested_at), "
        f"toUnixTimestamp64Milli(stored_at) FROM {clickhouse.table('events')}"
    )
    assert [tuple(int(v) for v in r) for r in rows] == [(expected, expected, expected)]
