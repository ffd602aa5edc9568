"""The embedded log's write-ahead file: a batch whose insert was cut short is replayed on start, under the
same token, and the events table and a materialized view over it end exact; a torn tail is ignored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from common.clickhouse import ClickHouse
from common.clock import FrozenClock
from common.cloudevents import CloudEvent
from common.errors import Unavailable
from common.events_table import EVENT_COLUMNS
from ingest.settings import SinkSettings
from ingest.sink.batch import OffsetRange
from ingest.sink.decode import Decoded
from ingest.sink.dedupe import Item
from ingest.sink.embedded import EMBEDDED_PARTITION, EMBEDDED_TOPIC, EmbeddedLog, items_digest
from ingest.sink.migrations import migrate_clickhouse
from ingest.sink.processor import PINNED_INSERT_SETTINGS
from ingest.sink.rows import RangeId, build_columns
from ingest.sink.wal import FileWal
from ingest.sink.wal_codec import WalBatch, encode_batch, unframe

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
STORED_AT_MS = 1_772_366_400_000


def event(i: int) -> CloudEvent:
    return CloudEvent(f"evt-{i}", "svc", "llm", f"c-{i % 3}", T0 + timedelta(seconds=i), f'{{"tokens":{i + 1}}}')


def create_rollup(ch: ClickHouse) -> None:
    """A rollup fed by a view, deduplicated like the aggregator's (a dedupe window on the rollup table)."""
    ch.command(
        f"CREATE TABLE {ch.table('tokens_rollup')} (subject String, tokens Int64) ENGINE = SummingMergeTree "
        "ORDER BY subject SETTINGS non_replicated_deduplication_window = 1000"
    )
    ch.command(
        f"CREATE MATERIALIZED VIEW {ch.table('tokens_mv')} TO {ch.table('tokens_rollup')} AS "
        f"SELECT subject, sum(JSONExtractInt(data, 'tokens')) AS tokens FROM {ch.table('events')} GROUP BY subject"
    )


def rollup(ch: ClickHouse) -> dict[str, int]:
    rows = ch.rows(f"SELECT subject, sum(tokens) FROM {ch.table('tokens_rollup')} GROUP BY subject")
    return {str(r[0]): int(r[1]) for r in rows}


def expected_rollup(events: list[CloudEvent]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in events:
        out[e.subject] = out.get(e.subject, 0) + int(e.data.split(":")[1].rstrip("}"))
    return out


def stored_ids(ch: ClickHouse) -> list[tuple[str, int]]:
    rows = ch.rows(f"SELECT id, ingest_offset FROM {ch.table('events')} ORDER BY ingest_offset")
    return [(str(r[0]), int(r[1])) for r in rows]


def crashed_mid_insert(ch: ClickHouse, wal_path: Path, events: list[CloudEvent]) -> None:
    """What a SIGKILL mid-insert leaves: the batch written ahead without a done marker, its raw rows stored
    under its token, the view's rollup not (the view is detached while the raw rows go in)."""
    items = [Item(i, Decoded("acme", e, T0)) for i, e in enumerate(events)]
    range_id = RangeId(EMBEDDED_TOPIC, EMBEDDED_PARTITION, OffsetRange(0, len(items) - 1))
    batch = WalBatch(range_id, items_digest(items), STORED_AT_MS, items)
    wal = FileWal(wal_path)
    assert wal.open().pending == []
    wal.append(batch)
    wal.close()
    ch.command(f"DETACH TABLE {ch.table('tokens_mv')}")
    try:
        ch.call(
            lambda c: c.insert(
                ch.table("events"),
                build_columns(range_id, items, STORED_AT_MS),
                column_names=list(EVENT_COLUMNS),
                column_oriented=True,
                settings={**PINNED_INSERT_SETTINGS, "insert_deduplication_token": range_id.token(batch.digest)},
            )
        )
    finally:
        ch.command(f"ATTACH TABLE {ch.table('tokens_mv')}")


async def test_an_unfinished_batch_is_replayed_on_start_and_the_rollup_ends_exact(
    clickhouse: ClickHouse, tmp_path: Path
) -> None:
    migrate_clickhouse(clickhouse)
    create_rollup(clickhouse)
    events = [event(i) for i in range(10)]
    wal_path = tmp_path / "embedded.wal"
    crashed_mid_insert(clickhouse, wal_path, events)
    assert len(stored_ids(clickhouse)) == 10
    assert rollup(clickhouse) == {}  # the state the replay must repair

    log = EmbeddedLog(clickhouse, SinkSettings(), clock=FrozenClock(T0 + timedelta(hours=1)), wal_path=wal_path)
    await log.start()
    assert log.counters.batches == 1
    assert rollup(clickhouse) == expected_rollup(events)
    # the client's retry of the same request gets new offsets and is dropped by the key check
    await log.publish("acme", events, T0)
    await log.publish("acme", [event(10)], T0)
    await log.close()
    assert stored_ids(clickhouse) == [*[(f"evt-{i}", i) for i in range(10)], ("evt-10", 20)]
    stored_at = clickhouse.rows(
        f"SELECT DISTINCT toUnixTimestamp64Milli(stored_at) FROM {clickhouse.table('events')} WHERE ingest_offset < 10"
    )
    assert [int(r[0]) for r in stored_at] == [STORED_AT_MS]  # the replay rebuilt the rows of the record
    assert rollup(clickhouse) == expected_rollup([*events, event(10)])

    # nothing is pending after a clean close: another start replays nothing and continues the offsets
    again = EmbeddedLog(clickhouse, SinkSettings(), clock=FrozenClock(T0), wal_path=wal_path)
    await again.start()
    assert again.counters.batches == 0
    await again.publish("acme", [event(5)], T0)  # all duplicates: no row, but the offset is used
    await again.close()
    third = EmbeddedLog(clickhouse, SinkSettings(), clock=FrozenClock(T0), wal_path=wal_path)
    await third.publish("acme", [event(11)], T0)
    await third.close()
    assert stored_ids(clickhouse)[-1] == ("evt-11", 22)
    assert rollup(clickhouse) == expected_rollup([*events, event(10), event(11)])


async def test_a_torn_tail_is_ignored(clickhouse: ClickHouse, tmp_path: Path) -> None:
    wal_path = tmp_path / "embedded.wal"
    first = EmbeddedLog(clickhouse, SinkSettings(), clock=FrozenClock(T0), wal_path=wal_path)
    await first.publish("acme", [event(0), event(1)], T0)
    await first.close()
    # a crash while appending the next batch: half its frame reached the file, its insert never started
    items = [Item(2, Decoded("acme", event(2), T0))]
    torn = encode_batch(WalBatch(RangeId(EMBEDDED_TOPIC, 0, OffsetRange(2, 2)), items_digest(items), 0, items))
    with wal_path.open("ab") as f:
        f.write(torn[: len(torn) // 2])

    second = EmbeddedLog(clickhouse, SinkSettings(), clock=FrozenClock(T0), wal_path=wal_path)
    await second.start()
    assert second.counters.batches == 0
    await second.publish("acme", [event(3)], T0)
    assert stored_ids(clickhouse) == [("evt-0", 0), ("evt-1", 1), ("evt-3", 2)]
    # the file stays readable past the dropped bytes
    payloads, intact = unframe(wal_path.read_bytes())
    assert intact == wal_path.stat().st_size
    assert len(payloads) >= 2
    await second.close()


async def test_one_owner_per_file(clickhouse: ClickHouse, tmp_path: Path) -> None:
    wal_path = tmp_path / "embedded.wal"
    first = EmbeddedLog(clickhouse, SinkSettings(), clock=FrozenClock(T0), wal_path=wal_path)
    await first.start()
    second = EmbeddedLog(clickhouse, SinkSettings(), clock=FrozenClock(T0), wal_path=wal_path)
    with pytest.raises(Unavailable, match="in use"):
        await second.start()
    await first.close()
    await second.start()
    await second.close()
