"""The embedded log: HTTP ingest without a broker, through the same exactly-once processor.

Each publish becomes one or more batches of a log named "embedded", partition 0, with offsets that
continue from the write-ahead file and the stored rows, written under the same rules as the Kafka worker
(range recorded first, deterministic rows, insert token from the range, key check). The range is recorded
in a write-ahead file (`wal.py`, next to the chdb data) together with the decoded events, fsync'd before
the insert and marked done after it; on start every batch without its done marker is replayed unchanged,
so a crash mid-insert (raw rows stored, a rollup not) is repaired under the same token. Without a file
(a ClickHouse server) ranges go to the `sink_ledger` table as before. A batch whose write failed is
retried, unchanged, before any later batch. Publishes are serialised (one drainer task under a lock;
publishes that arrive meanwhile are written together, as one range: group commit) and the blocking work
runs in a worker thread. When `publish` returns the events are stored; when it raises (after a few
unchanged retries) the caller may send them again: the key check drops whatever was stored meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import orjson
import structlog

from common.clickhouse import ClickHouse
from common.clock import Clock, SystemClock, to_millis
from common.cloudevents import NATIVE, CloudEvent
from common.errors import Unavailable
from common.events_table import EVENTS_TABLE
from common.ingest_notifications import IngestNotifier
from ingest.settings import SinkSettings
from ingest.sink.batch import OffsetRange
from ingest.sink.decode import Decoded
from ingest.sink.dedupe import Item
from ingest.sink.dlq import ClickHouseDeadLetters, DeadLetter, DeadLetterSink
from ingest.sink.ledger import LedgerRecord
from ingest.sink.migrations import migrate_clickhouse
from ingest.sink.processor import Batch, BatchProcessor, BatchResult, SinkCounters, stored_groups
from ingest.sink.rows import RangeId
from ingest.sink.tuning import tuned_interpreter
from ingest.sink.wal import FileWal
from ingest.sink.wal_codec import WalBatch, WalCorrupt
from ingest.wire import message_key

log = structlog.get_logger(__name__)

EMBEDDED_TOPIC = "embedded"
EMBEDDED_PARTITION = 0
WRITE_ATTEMPTS = 4


def items_digest(items: Sequence[Item]) -> str:
    """The digest of an embedded range: blake2b-96 over each item's row as compact JSON, `[offset, namespace,
    id, source, type, subject, time ms, data, ingested_at ms]`, in order. Write-ahead entries keep it and are
    checked against it on recovery, so these bytes must never change.

    Runs on the event loop for every HTTP batch: the items of a request share one ingested_at (converted
    once), and the tuples are unpacked rather than read attribute by attribute."""
    h = hashlib.blake2b(digest_size=12)
    update, dumps = h.update, orjson.dumps
    last_ingested: datetime | None = None
    ingested_ms = 0
    for offset, (namespace, (event_id, source, event_type, subject, time, data), ingested_at) in items:
        if ingested_at is not last_ingested:
            ingested_ms, last_ingested = to_millis(ingested_at), ingested_at
        update(dumps([offset, namespace, event_id, source, event_type, subject, to_millis(time), data, ingested_ms]))
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class _Pending:
    decoded: list[Decoded]
    done: asyncio.Future[None]


class EmbeddedLog:
    """An EventPublisher (ingest.publisher) that stores events in-process."""

    def __init__(
        self,
        clickhouse: ClickHouse,
        sink: SinkSettings,
        *,
        clock: Clock | None = None,
        dead_letters: DeadLetterSink | None = None,
        wal_path: Path | None = None,
        notifier: IngestNotifier | None = None,
    ) -> None:
        self._ch = clickhouse
        self._notifier = notifier
        self._settings = sink
        self._clock = clock or SystemClock()
        self._dead_letters = dead_letters or ClickHouseDeadLetters(clickhouse)
        self._wal = FileWal(wal_path) if wal_path is not None else None
        self._lock = asyncio.Lock()
        self._processor: BatchProcessor | None = None
        self._next_offset = 0
        self._unfinished: deque[tuple[Batch, LedgerRecord]] = deque()  # recorded, insert not yet confirmed
        self._pending: deque[_Pending] = deque()
        self._drainer: asyncio.Task[None] | None = None
        self._tuning = contextlib.ExitStack()
        self.counters = SinkCounters()

    async def start(self) -> None:
        """Create the tables if missing, replay unfinished batches, find where the log continues (idempotent)."""
        async with self._lock:
            await self._start()

    async def _start(self) -> None:
        if self._processor is not None:
            return
        wal = self._wal

        def open_processor() -> tuple[BatchProcessor, int, list[tuple[Batch, LedgerRecord]]]:
            migrate_clickhouse(self._ch)
            processor = BatchProcessor(self._ch, dedupe_window=self._settings.dedupe_window(), clock=self._clock)
            processor.keys.load()  # at start, not in the first publish
            after_ledger = processor.ledger.next_offset(EMBEDDED_TOPIC, EMBEDDED_PARTITION)  # ranges before the file
            # The ledger's TTL may have cleared old records; stored rows still pin the offsets used.
            rows = self._ch.rows(
                f"SELECT max(ingest_offset) + 1, count() FROM {self._ch.table(EVENTS_TABLE)} "
                "WHERE ingest_topic = {topic:String} AND ingest_partition = {partition:Int32}",
                parameters={"topic": EMBEDDED_TOPIC, "partition": EMBEDDED_PARTITION},
            )
            after_rows = int(rows[0][0]) if int(rows[0][1]) else 0
            if wal is None:
                return processor, max(after_ledger, after_rows), []
            state = wal.open()
            try:
                unfinished = [_unfinished(b) for b in state.pending]
            except Exception:
                wal.close()
                raise
            return processor, max(after_ledger, after_rows, state.next_offset), unfinished

        processor, self._next_offset, unfinished = await asyncio.to_thread(open_processor)
        self._processor = processor
        self._unfinished.extend(unfinished)
        self._tuning.enter_context(tuned_interpreter())  # the request loop decodes while a thread writes
        log.info(
            "embedded_log_started",
            next_offset=self._next_offset,
            unfinished=len(unfinished),
            compiled_decoder=NATIVE,
        )
        if unfinished:
            try:
                await self._finish_unfinished(processor)
            except Unavailable as exc:  # the next publish retries them first
                log.warning("embedded_replay_failed", count=len(self._unfinished), error=str(exc)[:300])
        if wal is not None and not self._unfinished:
            await asyncio.to_thread(wal.rotate, self._next_offset)

    async def publish(self, namespace: str, events: Sequence[CloudEvent], ingested_at: datetime) -> None:
        """Store the events; returns once they are in ClickHouse. Concurrent publishes are grouped into
        one batch (group commit), so a write's fixed cost is shared by every request waiting for it."""
        if not events:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending([Decoded(namespace, e, ingested_at) for e in events], done))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        await asyncio.shield(done)  # a cancelled caller does not cancel the write others share

    async def _drain(self) -> None:
        async with self._lock:
            while self._pending:
                group: list[_Pending] = []
                size = 0
                while self._pending and (
                    not group or size + len(self._pending[0].decoded) <= self._settings.batch_size
                ):
                    group.append(self._pending.popleft())
                    size += len(group[-1].decoded)
                try:
                    await self._start()
                    await self._write([d for p in group for d in p.decoded])
                except Exception as exc:  # noqa: BLE001 - every publisher of the group gets the error
                    for p in group:
                        if not p.done.done():
                            p.done.set_exception(exc)
                else:
                    for p in group:
                        if not p.done.done():
                            p.done.set_result(None)

    async def _write(self, decoded: Sequence[Decoded]) -> None:
        processor = self._processor
        assert processor is not None
        # A recorded batch whose insert failed may be partly stored (raw rows, not every rollup): it is
        # finished first, under its own token, or the key check would drop a resent copy of its events.
        await self._finish_unfinished(processor)
        for i in range(0, len(decoded), self._settings.batch_size):
            await self._write_range(processor, decoded[i : i + self._settings.batch_size])
        wal = self._wal
        if wal is not None and wal.wants_rotation and not self._unfinished:
            await asyncio.to_thread(wal.rotate, self._next_offset)

    async def _finish_unfinished(self, processor: BatchProcessor) -> None:
        while self._unfinished:
            batch, rec = self._unfinished[0]
            log.info("embedded_batch_replayed", start=batch.range_id.range.start, end=batch.range_id.range.end)
            result = await self._write_with_retry(processor, batch, [rec], replay=True)
            self._unfinished.popleft()
            await self._account(batch, result)
            self._notify(batch, rec)

    async def _write_range(self, processor: BatchProcessor, decoded: Sequence[Decoded]) -> None:
        start = self._next_offset
        # Offsets are never reused, even after a failure: a failed range may be partly written.
        self._next_offset = start + len(decoded)
        items = [Item(start + i, d) for i, d in enumerate(decoded)]
        range_id = RangeId(EMBEDDED_TOPIC, EMBEDDED_PARTITION, OffsetRange(start, start + len(decoded) - 1))
        batch = processor.prepare(Batch(range_id, items_digest(items), items))
        recorded: list[LedgerRecord] = []
        try:
            result = await self._write_with_retry(processor, batch, recorded)
        except Exception:
            if recorded:
                self._unfinished.append((batch, recorded[0]))
            raise
        await self._account(batch, result)
        self._notify(batch, recorded[0])

    def _notify(self, batch: Batch, rec: LedgerRecord) -> None:
        """After the batch is stored and visible: tell followers whose usage changed (common.ingest_notifications)."""
        if self._notifier is None:
            return
        self._notifier.publish(*stored_groups(batch, rec))

    async def _account(self, batch: Batch, result: BatchResult) -> None:
        self.counters.add(batch, result)
        if not result.conflicts:
            return
        start = batch.range_id.range.start
        letters = []
        for conflict in result.conflicts:
            log.warning("sink_event_conflict", topic=EMBEDDED_TOPIC, offset=conflict.offset, reason=conflict.reason)
            event = batch.items[conflict.offset - start].decoded.event
            letters.append(
                DeadLetter(
                    "conflict",
                    conflict.reason,
                    EMBEDDED_TOPIC,
                    EMBEDDED_PARTITION,
                    conflict.offset,
                    message_key(*conflict.key),
                    event.to_json(),
                )
            )
        try:
            await self._dead_letters.send(letters)
        except Exception as exc:  # noqa: BLE001 - the events are stored; only the report failed
            log.warning("dead_letters_failed", count=len(letters), error=str(exc)[:300])

    def _record(self, processor: BatchProcessor, batch: Batch) -> LedgerRecord:
        """Durably record the range before its insert: in the write-ahead file, else the ledger table."""
        if self._wal is None:
            return processor.record(batch.range_id, batch.digest)
        rec = LedgerRecord(batch.range_id, batch.digest, to_millis(self._clock.now()))
        self._wal.append(WalBatch(batch.range_id, batch.digest, rec.stored_at_ms, batch.items))
        return rec

    async def _write_with_retry(
        self, processor: BatchProcessor, batch: Batch, recorded: list[LedgerRecord], *, replay: bool = False
    ) -> BatchResult:
        """Write the batch, recording it first unless `recorded` holds its record (filled in here).
        `replay`: a range left unfinished (by a crash, or a failure here) may be partly stored."""
        wal = self._wal

        def attempt() -> BatchResult:
            if not recorded:
                recorded.append(self._record(processor, batch))
            result = processor.write(batch, recorded[0], replay=replay)
            if wal is not None:
                wal.mark_done(batch.range_id)
            return result

        backoff = self._settings.retry_backoff_initial_ms / 1000
        for n in range(1, WRITE_ATTEMPTS + 1):
            try:
                return await asyncio.to_thread(attempt)
            except Exception as exc:
                self.counters.write_failures += 1
                log.warning("embedded_write_failed", attempt=n, start=batch.range_id.range.start, error=str(exc)[:300])
                if n == WRITE_ATTEMPTS:
                    raise Unavailable("ClickHouse did not accept the events; send them again") from exc
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._settings.retry_backoff_max_ms / 1000)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        """Wait for the publishes in flight; the ClickHouse client belongs to the caller."""
        if self._drainer is not None:
            await asyncio.wait([self._drainer])
        async with self._lock:
            wal = self._wal
            if wal is not None and self._processor is not None:
                if not self._unfinished:
                    await asyncio.to_thread(wal.rotate, self._next_offset)
                wal.close()
            self._processor = None
            self._unfinished.clear()
            self._tuning.close()


def _unfinished(batch: WalBatch) -> tuple[Batch, LedgerRecord]:
    """A written-ahead batch as the processor takes it, checked against its digest."""
    if items_digest(batch.items) != batch.digest:
        raise WalCorrupt(f"write-ahead batch at offset {batch.range_id.range.start} does not match its digest")
    return (
        Batch(batch.range_id, batch.digest, batch.items),
        LedgerRecord(batch.range_id, batch.digest, batch.stored_at_ms),
    )
