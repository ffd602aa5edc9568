"""Kafka messages -> batches for the processor, and the per-partition state the worker keeps.

`batch_from_records` is pure: it decodes every message (both CloudEvents bindings), computes the
message digest and turns malformed messages into dead letters. The worker owns I/O and retries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ingest.sink.batch import Cut, OffsetRange, plan_cuts
from ingest.sink.decode import Decoder
from ingest.sink.dedupe import Conflict, Item
from ingest.sink.digest import digest_numbers, digest_of
from ingest.sink.dlq import DeadLetter
from ingest.sink.ledger import LedgerRecord
from ingest.sink.processor import Batch
from ingest.sink.rows import RangeId


def batch_from_records(
    topic: str, partition: int, offsets: OffsetRange, records: Sequence[Any], default_namespace: str
) -> tuple[Batch, list[DeadLetter]]:
    """Decode aiokafka ConsumerRecords of one range into a Batch plus dead letters for the malformed."""
    decoded = Decoder(default_namespace).decode_records(list(records), Item)
    malformed: list[tuple[int, str]] = []
    letters: list[DeadLetter] = []
    for index, refused in decoded.rejected:
        rec = records[index]
        malformed.append((rec.offset, refused.reason))
        letters.append(
            DeadLetter("malformed", refused.reason, topic, partition, rec.offset, rec.key, rec.value, list(rec.headers))
        )
    numbers = decoded.numbers
    if numbers is None:  # a record whose offset or timestamp does not fit int64: digest_numbers raises why
        numbers = digest_numbers([rec.offset for rec in records], [rec.timestamp for rec in records], decoded.values)
    digest = digest_of(numbers, decoded.values)
    return Batch(RangeId(topic, partition, offsets), digest, decoded.items, malformed), letters


def conflict_letters(
    topic: str, partition: int, conflicts: Sequence[Conflict], records: Sequence[Any]
) -> list[DeadLetter]:
    if not conflicts:
        return []  # the usual case: no index of the batch's records to build
    by_offset = {rec.offset: rec for rec in records}
    letters = []
    for conflict in conflicts:
        rec = by_offset[conflict.offset]
        letters.append(
            DeadLetter(
                "conflict", conflict.reason, topic, partition, rec.offset, rec.key, rec.value, list(rec.headers or ())
            )
        )
    return letters


@dataclass(slots=True)
class PartitionState:
    """What the worker holds for one assigned partition.

    `recorded` is None until the ledger was read after assignment (the partition stays paused until
    then: without the recorded ranges a replay could cut different boundaries).
    """

    topic: str
    partition: int
    recorded: list[OffsetRange] | None = None
    records_by_start: dict[int, LedgerRecord] = field(default_factory=dict)
    buffer: list[Any] = field(default_factory=list)
    first_buffered_at: float | None = None
    revoked: bool = False
    keys_loaded: bool = False  # the key set holds the keys stored from this partition before it was ours

    def set_recorded(self, records: Sequence[LedgerRecord]) -> None:
        self.recorded = [r.range_id.range for r in records]
        self.records_by_start = {r.range_id.range.start: r for r in records}

    def extend(self, records: Sequence[Any], now: float) -> None:
        last = self.buffer[-1].offset if self.buffer else -1
        fresh = [r for r in records if r.offset > last]
        if fresh and not self.buffer:
            self.first_buffered_at = now
        self.buffer.extend(fresh)

    def cuts(self, max_size: int, *, flush_partial: bool) -> list[Cut]:
        if self.recorded is None or not self.buffer:
            return []
        return plan_cuts([r.offset for r in self.buffer], self.recorded, max_size, flush_partial=flush_partial)

    def take(self, cut: Cut) -> list[Any]:
        """Messages of a cut (cuts of one plan are taken in order, each from the buffer's head)."""
        n = cut.stop - cut.first
        taken = self.buffer[:n]
        del self.buffer[:n]
        return taken

    def done(self, cut: Cut, now: float) -> None:
        self.records_by_start.pop(cut.range.start, None)
        if self.recorded is not None and cut.recorded:
            self.recorded = [r for r in self.recorded if r != cut.range]
        self.first_buffered_at = now if self.buffer else None
