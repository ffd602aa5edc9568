"""The exactly-once write of one batch into ClickHouse (blocking: callers run it in a worker thread).

Order, per batch (one contiguous offset range of one partition):
1. record the range in the ledger (with stored_at and the message digest) unless already recorded;
2. drop duplicates inside the batch and against stored events (the key check), report conflicts;
3. insert the rows, built only from the messages and the record, under a token derived from the range;
4. add the batch's keys to the key check's in-memory set (keycheck.py).
The caller commits offsets only after `write` returned, and retries a failed `write` unchanged with
the same record. Nothing is claimed before the insert succeeded: the key check reads the events
table itself, so a failed write leaves no trace that could hide an event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from common.clickhouse import ClickHouse
from common.clock import Clock, to_millis
from common.events_table import EVENT_COLUMNS, EVENTS_TABLE
from common.ingest_notifications import EventGroup, group_events
from ingest.sink.dedupe import Conflict, Item, resolve_hashed
from ingest.sink.keycheck import ClickHouseKeyCheck
from ingest.sink.keyindex import as_hashes, key_hash
from ingest.sink.ledger import ClickHouseLedger, LedgerRecord
from ingest.sink.prepare import Prepared, Preparer
from ingest.sink.rows import INSERT_FORMAT, RangeId

# Settings every insert pins, because exactly-once depends on them (defaults differ across versions:
# chdb defaults to async_insert=1, and 26.x ignores insert_deduplicate=0 in favour of deduplicate_insert).
PINNED_INSERT_SETTINGS: dict[str, Any] = {
    "async_insert": 0,
    "insert_deduplicate": 1,
    "deduplicate_insert": "enable",
    "deduplicate_blocks_in_dependent_materialized_views": 1,
}


@dataclass(frozen=True, slots=True)
class Batch:
    """The decoded messages of one range; `malformed` are (offset, reason) pairs; `prepared`: the items'
    precomputed values (prepare.py), made by the writer when absent."""

    range_id: RangeId
    digest: str
    items: Sequence[Item]
    malformed: Sequence[tuple[int, str]] = ()
    prepared: Prepared | None = None


def stored_groups(batch: Batch, rec: LedgerRecord) -> tuple[list[EventGroup], datetime]:
    """What a stored batch's ingest notifications say: its events grouped by (namespace, subject, type), and
    the storage time its rows carry (common.ingest_notifications)."""
    stored_at = datetime.fromtimestamp(rec.stored_at_ms / 1000, UTC)
    if batch.prepared is not None:
        return batch.prepared.groups, stored_at
    events = ((i.decoded.namespace, i.decoded.event.subject, i.decoded.event.type, i.decoded.event.time)
              for i in batch.items)  # fmt: skip
    return group_events(events), stored_at


@dataclass(frozen=True, slots=True)
class BatchResult:
    stored: int
    duplicates: int
    conflicts: list[Conflict]


@dataclass(slots=True)
class SinkCounters:
    """Totals since start; a replayed batch counts again (the insert under its token does not)."""

    batches: int = 0
    stored: int = 0
    duplicates: int = 0
    conflicts: int = 0
    malformed: int = 0
    write_failures: int = 0
    lost_to_retention: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)

    def add(self, batch: Batch, result: BatchResult) -> None:
        self.batches += 1
        self.stored += result.stored
        self.duplicates += result.duplicates
        self.conflicts += len(result.conflicts)
        self.malformed += len(batch.malformed)


def supported_insert_settings(ch: ClickHouse) -> dict[str, Any]:
    """The pinned settings this engine knows (through the one filter, `ClickHouse.supported`)."""
    return ch.supported(PINNED_INSERT_SETTINGS)


class BatchProcessor:
    def __init__(self, ch: ClickHouse, *, dedupe_window: timedelta, clock: Clock) -> None:
        self._ch = ch
        self._clock = clock
        self._table = ch.table(EVENTS_TABLE)
        self._columns = list(EVENT_COLUMNS)
        self.ledger = ClickHouseLedger(ch)
        self.keys = ClickHouseKeyCheck(ch, window=dedupe_window, clock=clock)
        self._settings = supported_insert_settings(ch)
        self._preparer = Preparer()

    def prepare(self, batch: Batch) -> Batch:
        """The batch with its precomputed values (prepare.py), as `write` would make them."""
        return batch if batch.prepared is not None else replace(batch, prepared=self._preparer.prepare(batch.items))

    def record(self, range_id: RangeId, digest: str) -> LedgerRecord:
        """Durably record a new range, stamping the stored_at its rows will carry forever."""
        return self.record_many([(range_id, digest)])[0]

    def record_many(self, ranges: Sequence[tuple[RangeId, str]]) -> list[LedgerRecord]:
        """Durably record new ranges in one ledger insert. Recording a range early is safe: a recorded
        range that is never written is replayed, with the same boundaries, by whoever owns it next."""
        stored_at_ms = to_millis(self._clock.now())
        recs = [LedgerRecord(range_id, digest, stored_at_ms) for range_id, digest in ranges]
        self.ledger.record_many(recs)
        return recs

    def write(self, batch: Batch, rec: LedgerRecord, *, replay: bool = False) -> BatchResult:
        """Store the batch's new events exactly once. Safe to call again with the same arguments.

        `replay`: the range was recorded before this process took it over (ledger, write-ahead file):
        some of its rows may be stored already (see ClickHouseKeyCheck.stored)."""
        if rec.range_id != batch.range_id or rec.digest != batch.digest:
            raise ValueError("the ledger record does not describe this batch")
        prepared = self.prepare(batch).prepared
        assert prepared is not None
        lookup = self.keys.stored(
            batch.range_id, batch.items, replay=replay, hashes=prepared.key_hashes, payloads=prepared.payload_hashes
        )
        stored_hashes = as_hashes(key_hash(*key) for key in lookup.found)
        resolution = resolve_hashed(batch.items, lookup.hashes, lookup.found, stored_hashes)
        if resolution.keep:
            # resolve_hashed keeps a subsequence: as long as the items, it is all of them
            at = None if len(resolution.keep) == len(batch.items) else prepared.kept_at(resolution.keep)
            block = prepared.encode(batch.range_id, at, rec.stored_at_ms)
            settings = {**self._settings, "insert_deduplication_token": rec.token}
            self._ch.call(
                lambda c: c.raw_insert(self._table, self._columns, block, settings=settings, fmt=INSERT_FORMAT)
            )
            kept_payloads = prepared.payload_hashes if at is None else prepared.payload_hashes[at]
            kept_hashes = lookup.hashes if at is None else lookup.hashes[at]
            self.keys.remember(kept_hashes, kept_payloads)
        return BatchResult(len(resolution.keep), resolution.duplicates, resolution.conflicts)
