"""The key check's in-memory key set against the real engine: its hash is ClickHouse's, a key another
worker stored from a partition is known once that partition is assigned, and events too old for the
set are still looked up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from common.clickhouse import ClickHouse
from common.clock import FrozenClock
from common.cloudevents import CloudEvent
from ingest.sink.batch import OffsetRange
from ingest.sink.decode import Decoded
from ingest.sink.dedupe import Item
from ingest.sink.keyindex import KEY_HASH_SQL, PAYLOAD_HASH_SQL, key_hash, payload_hash
from ingest.sink.migrations import migrate_clickhouse
from ingest.sink.processor import Batch, BatchProcessor, BatchResult
from ingest.sink.rows import RangeId

pytestmark = pytest.mark.integration

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
WINDOW = timedelta(days=32)
TOPIC = "events"


def event(event_id: str, at: datetime, *, tokens: int = 1) -> CloudEvent:
    return CloudEvent(id=event_id, source="svc", type="llm", subject="s", time=at, data=f'{{"tokens":{tokens}}}')


def write(
    processor: BatchProcessor, partition: int, start: int, events: list[CloudEvent], *, replay: bool = False
) -> BatchResult:
    items = [Item(start + i, Decoded("acme", e, NOW)) for i, e in enumerate(events)]
    range_id = RangeId(TOPIC, partition, OffsetRange(start, start + len(items) - 1))
    batch = Batch(range_id, f"d{partition}-{start}", items)
    return processor.write(batch, processor.record(range_id, batch.digest), replay=replay)


def stored_ids(ch: ClickHouse) -> list[str]:
    return sorted(str(r[0]) for r in ch.rows(f"SELECT id FROM {ch.table('events')}"))


def test_the_sql_hash_is_the_python_hash(clickhouse: ClickHouse) -> None:
    keys = [("acme", "svc", "evt-1"), ("ns", "src/é", "ид-ü"), ("n", "s", "1234567890123456789"), ("a", "", "x")]
    rows = clickhouse.rows(
        f"SELECT {KEY_HASH_SQL} FROM (SELECT tupleElement(k, 1) AS namespace, tupleElement(k, 2) AS source, "
        "tupleElement(k, 3) AS id FROM (SELECT arrayJoin({keys:Array(Tuple(String, String, String))}) AS k))",
        parameters={"keys": keys},
    )
    assert [int(r[0]) for r in rows] == [key_hash(*k) for k in keys]


def test_a_copy_stored_by_another_worker_is_found_once_its_partition_is_assigned(clickhouse: ClickHouse) -> None:
    migrate_clickhouse(clickhouse)
    clock = FrozenClock(NOW)
    ours = BatchProcessor(clickhouse, dedupe_window=WINDOW, clock=clock)
    write(ours, 0, 0, [event("a", NOW)])  # our set is loaded now
    theirs = BatchProcessor(clickhouse, dedupe_window=WINDOW, clock=clock)
    write(theirs, 1, 0, [event("b", NOW), event("c", NOW)])  # they own partition 1 meanwhile

    ours.keys.load_assigned(TOPIC, [1])  # partition 1 is ours now
    result = write(ours, 1, 2, [event("b", NOW), event("c", NOW, tokens=9), event("d", NOW)])
    assert (result.stored, result.duplicates, len(result.conflicts)) == (1, 1, 1)
    assert stored_ids(clickhouse) == ["a", "b", "c", "d"]


def test_a_first_assignment_loads_the_whole_table(clickhouse: ClickHouse) -> None:
    migrate_clickhouse(clickhouse)
    clock = FrozenClock(NOW)
    write(BatchProcessor(clickhouse, dedupe_window=WINDOW, clock=clock), 3, 0, [event("x", NOW), event("y", NOW)])
    fresh = BatchProcessor(clickhouse, dedupe_window=WINDOW, clock=clock)
    fresh.keys.load_assigned(TOPIC, [0])
    assert fresh.keys.indexed_keys == 2  # partition 3's keys too: copies published under other keys meet them


def test_without_the_partition_load_the_copy_would_be_stored_again(clickhouse: ClickHouse) -> None:
    """The test above can fail: a set that misses a stored key lets its copy through."""
    migrate_clickhouse(clickhouse)
    clock = FrozenClock(NOW)
    ours = BatchProcessor(clickhouse, dedupe_window=WINDOW, clock=clock)
    write(ours, 0, 0, [event("a", NOW)])
    theirs = BatchProcessor(clickhouse, dedupe_window=WINDOW, clock=clock)
    write(theirs, 1, 0, [event("b", NOW)])
    write(ours, 1, 1, [event("b", NOW)])
    assert stored_ids(clickhouse) == ["a", "b", "b"]


def test_events_older_than_the_set_are_looked_up(clickhouse: ClickHouse) -> None:
    migrate_clickhouse(clickhouse)
    clock = FrozenClock(NOW)
    old = NOW - 3 * WINDOW  # before the set's horizon (two windows back)
    first = BatchProcessor(clickhouse, dedupe_window=WINDOW, clock=clock)
    write(first, 0, 0, [event("late", old), event("new", NOW)])
    restarted = BatchProcessor(clickhouse, dedupe_window=WINDOW, clock=clock)
    result = write(restarted, 0, 2, [event("late", old), event("new", NOW), event("late", old, tokens=5)])
    assert (result.stored, result.duplicates, len(result.conflicts)) == (0, 2, 1)
    assert restarted.keys.indexed_keys >= 1  # "new" came from the table; "late" is past the horizon


def test_the_set_is_reloaded_once_a_window_has_passed(clickhouse: ClickHouse) -> None:
    migrate_clickhouse(clickhouse)
    clock = FrozenClock(NOW)
    processor = BatchProcessor(clickhouse, dedupe_window=WINDOW, clock=clock)
    write(processor, 0, 0, [event(f"e{i}", NOW) for i in range(5)])
    assert processor.keys.indexed_keys == 5
    clock.advance_to(NOW + 3 * WINDOW)  # the stored events were stored longer ago than the dedupe horizon
    result = write(processor, 0, 5, [event("e0", NOW), event("fresh", clock.now())])
    # The horizon is a window of storage time: a copy of a key stored three windows ago is past it
    assert (result.stored, result.duplicates) == (2, 0)
    assert processor.keys.indexed_keys == 2  # the reload dropped the old keys; the batch stored both


def test_copies_are_one_event_whatever_their_event_times(clickhouse: ClickHouse) -> None:
    """OpenMeter's e2e case: 1000 copies of one event with times spread over now +/- 30 days count once;
    a copy with another payload is still reported as a conflict, across any event time."""
    migrate_clickhouse(clickhouse)
    clock = FrozenClock(NOW)
    processor = BatchProcessor(clickhouse, dedupe_window=timedelta(days=32), clock=clock)
    times = [NOW + timedelta(minutes=(i * 7919) % (60 * 24 * 60) - 60 * 24 * 30) for i in range(1000)]
    offset, stored, refused = 0, 0, 0
    for start in range(0, 1000, 100):  # ten batches, so most copies meet a stored key, not one in the batch
        result = write(processor, 0, offset, [event("same", t) for t in times[start : start + 100]])
        stored += result.stored
        refused += result.duplicates + len(result.conflicts)
        offset += 100
        clock.advance_to(clock.now() + timedelta(hours=1))
    assert (stored, refused) == (1, 999)
    assert clickhouse.rows(f"SELECT count() FROM {clickhouse.table('events')} WHERE id = 'same'")[0][0] == 1
    # an exact copy (same time and data) a month of event time away from any other: a duplicate
    first_time = times[0]
    again = write(processor, 0, offset, [event("same", first_time)])
    assert (again.stored, again.duplicates) == (0, 1)
    # another payload under the same key, 29 days earlier in event time: still a conflict, reported
    conflicting = write(processor, 0, offset + 1, [event("same", NOW - timedelta(days=29), tokens=999)])
    assert conflicting.stored == 0
    assert len(conflicting.conflicts) == 1


def test_the_sql_payload_hash_is_the_python_hash(clickhouse: ClickHouse) -> None:
    migrate_clickhouse(clickhouse)
    events = [
        event("p1", NOW),
        event("p2", NOW + timedelta(milliseconds=37), tokens=7),
        CloudEvent("p3", "svc", "t\u00e9", "sub/\u0438", datetime(1970, 1, 1, tzinfo=UTC), "null"),
    ]
    write(BatchProcessor(clickhouse, dedupe_window=WINDOW, clock=FrozenClock(NOW)), 0, 0, events)
    rows = clickhouse.rows(f"SELECT id, {PAYLOAD_HASH_SQL} FROM {clickhouse.table('events')} ORDER BY id")
    epoch, ms = datetime(1970, 1, 1, tzinfo=UTC), timedelta(milliseconds=1)
    expected = [payload_hash(e.type, e.subject, (e.time - epoch) // ms, e.data) for e in events]
    assert [int(r[1]) for r in rows] == expected


def test_an_exact_copy_of_a_stored_event_needs_no_lookup(clickhouse: ClickHouse) -> None:
    migrate_clickhouse(clickhouse)
    processor = BatchProcessor(clickhouse, dedupe_window=WINDOW, clock=FrozenClock(NOW))
    write(processor, 0, 0, [event("a", NOW), event("b", NOW)])
    asked: list[int] = []
    real_lookup = processor.keys.lookup

    def counting_lookup(range_id: RangeId, items: list[Item], horizon: object = None) -> object:
        asked.append(len(items))
        return real_lookup(range_id, items, horizon)  # type: ignore[arg-type]

    processor.keys.lookup = counting_lookup  # type: ignore[method-assign,assignment]
    result = write(processor, 0, 2, [event("a", NOW), event("c", NOW)])
    assert (result.stored, result.duplicates, asked) == (1, 1, [])
    result = write(processor, 0, 4, [event("b", NOW, tokens=2)])  # a conflict is looked up, exactly
    assert (result.stored, len(result.conflicts), asked) == (0, 1, [1])
    assert "data" in result.conflicts[0].reason


def test_a_replayed_range_does_not_take_its_own_rows_for_copies(clickhouse: ClickHouse) -> None:
    """A replay must rebuild the same rows (the insert under its token then repairs whatever the crash
    left out, e.g. a rollup): its own stored rows are in the key set with matching payloads, and only a
    lookup, which leaves the range's rows out, tells them from real copies."""
    migrate_clickhouse(clickhouse)
    events = [event("r1", NOW), event("r2", NOW)]
    write(BatchProcessor(clickhouse, dedupe_window=WINDOW, clock=FrozenClock(NOW)), 0, 0, events)
    restarted = BatchProcessor(clickhouse, dedupe_window=WINDOW, clock=FrozenClock(NOW))
    assert write(restarted, 0, 0, events, replay=True).stored == 2  # same rows, the token drops the insert
    assert write(restarted, 0, 0, events, replay=False).stored == 0  # what skipping the flag would do
    assert stored_ids(clickhouse) == ["r1", "r2"]
