"""The sink worker: an aiokafka consumer group feeding the exactly-once batch processor.

Loop: fetch -> buffer per partition -> cut batches (size, time, ledger boundaries) -> record + write
(in a worker thread) -> dead letters -> commit end+1. A failed write pauses the partitions and is
retried unchanged with exponential backoff; offsets are never committed for an unwritten batch.
A revoke waits for the write in flight (so the ledger and the next owner agree) and drops the rest
of the buffer; a new owner replays every recorded range at or past the committed offset.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from common.clickhouse import ClickHouse, connect_clickhouse
from common.clock import Clock, SystemClock
from common.cloudevents import NATIVE
from common.settings import ClickHouseSettings, KafkaSettings
from ingest.notification_stream import KafkaNotificationPublisher
from ingest.settings import SinkSettings
from ingest.sink.consumer import PartitionState, batch_from_records, conflict_letters
from ingest.sink.dlq import DeadLetter, DeadLetterSink, KafkaDeadLetters
from ingest.sink.ledger import LedgerRecord
from ingest.sink.metrics import SinkMetrics
from ingest.sink.migrations import migrate_clickhouse
from ingest.sink.processor import Batch, BatchProcessor, BatchResult, SinkCounters, stored_groups
from ingest.sink.tuning import tuned_interpreter

log = structlog.get_logger(__name__)

SHUTDOWN_RETRY_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class _Job:
    """A decoded batch waiting for the writer."""

    tp: TopicPartition
    state: PartitionState
    batch: Batch
    letters: list[DeadLetter]
    records: list[Any]
    record: LedgerRecord | None
    final: bool


def lost_to_retention(committed: int, beginning: int) -> int:
    """Messages between the committed offset and the partition's earliest retained one: never written."""
    return max(0, beginning - committed)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: SinkWorker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._worker.revoke(list(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self._worker.assign(list(assigned))


@dataclass(slots=True)
class _Attempt:
    """The ledger record of a batch being written, kept across its retries once made."""

    record: LedgerRecord | None


class SinkWorker:
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        processor: BatchProcessor,
        dead_letters: DeadLetterSink,
        settings: SinkSettings,
        notifications: KafkaNotificationPublisher | None = None,
    ) -> None:
        self.consumer = consumer
        self.processor = processor
        self.dead_letters = dead_letters
        self.settings = settings
        self.notifications = notifications
        self.metrics: SinkMetrics | None = None
        self._committed: dict[TopicPartition, int] = {}
        self.counters = SinkCounters()
        self.partitions: dict[TopicPartition, PartitionState] = {}
        self._write_lock = asyncio.Lock()
        self._paused = False
        self._stop = asyncio.Event()
        self._give_up_at: float | None = None
        # Jobs handed to the writer and not taken yet, and ledger records made for them ahead of their
        # write (one ledger insert records the batch being written and those queued behind it).
        self._queued: deque[_Job] = deque()
        self._early: dict[tuple[TopicPartition, int], LedgerRecord] = {}

    def listener(self) -> ConsumerRebalanceListener:
        return _Listener(self)

    # rebalance --------------------------------------------------------------------------------
    def assign(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            if tp not in self.partitions:
                self.partitions[tp] = PartitionState(tp.topic, tp.partition)
        if tps:
            self.consumer.pause(*tps)  # until the ledger was read
        log.info("sink_partitions_assigned", partitions=sorted(tp.partition for tp in tps))

    async def revoke(self, tps: list[TopicPartition]) -> None:
        async with self._write_lock:  # let the write in flight finish; buffered batches are dropped
            for tp in tps:
                state = self.partitions.pop(tp, None)
                if state is not None:
                    state.revoked = True
            for key in [key for key in self._early if key[0] in tps]:
                del self._early[key]  # recorded, never written: the next owner replays them
        log.info("sink_partitions_revoked", partitions=sorted(tp.partition for tp in tps))

    async def _load_ledgers(self) -> None:
        new = [tp for tp, state in self.partitions.items() if state.recorded is None and not state.keys_loaded]
        for topic in sorted({tp.topic for tp in new}):
            # the keys the previous owners stored from these partitions, before any batch of them is written
            numbers = sorted(tp.partition for tp in new if tp.topic == topic)
            await asyncio.to_thread(self.processor.keys.load_assigned, topic, numbers)
            for tp in new:
                state = self.partitions.get(tp)  # None: revoked meanwhile
                if tp.topic == topic and state is not None:
                    state.keys_loaded = True
        for tp, state in list(self.partitions.items()):
            if state.recorded is not None:
                continue
            committed = await self.consumer.committed(tp)
            if committed is not None and committed >= 0:
                self._committed[tp] = committed
                beginning = (await self.consumer.beginning_offsets([tp])).get(tp, 0)
                lost = lost_to_retention(committed, beginning)
                if lost:
                    # auto_offset_reset would skip them silently: these accepted events were deleted by the
                    # topic's retention before the sink wrote them.
                    self.counters.lost_to_retention += lost
                    log.error(
                        "sink_events_lost_to_retention",
                        partition=tp.partition,
                        committed=committed,
                        earliest=beginning,
                        lost=lost,
                    )
            start = committed if committed is not None and committed >= 0 else 0
            records = await asyncio.to_thread(self.processor.ledger.recorded_from, tp.topic, tp.partition, start)
            if state.revoked:
                continue
            state.set_recorded(records)
            if committed is not None and committed >= 0:
                self.consumer.seek(tp, committed)
            if not self._paused:
                self.consumer.resume(tp)
            log.info("sink_partition_ready", partition=tp.partition, committed=committed, replay_ranges=len(records))

    # main loop --------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and decode here; a writer task writes and commits, so decoding the next batch overlaps
        the ClickHouse work of the previous one (a small queue bounds what is held in memory)."""
        self._stop = stop
        queue: asyncio.Queue[_Job | None] = asyncio.Queue(maxsize=2)
        writer = asyncio.create_task(self._writer(queue))
        poll_ms = max(1, min(self.settings.batch_timeout_ms, 200))
        try:
            with tuned_interpreter():
                await self._loop(stop, queue, writer, poll_ms)
        finally:
            if not writer.done():
                await queue.put(None)
            await writer  # raises if the writer failed

    async def _loop(
        self, stop: asyncio.Event, queue: asyncio.Queue[_Job | None], writer: asyncio.Task[None], poll_ms: int
    ) -> None:
        while not stop.is_set() and not writer.done():
            try:
                await self._load_ledgers()
            except Exception as exc:  # noqa: BLE001 - ClickHouse down: stay paused and retry
                log.warning("sink_ledger_read_failed", error=str(exc))
                await self._sleep(self.settings.retry_backoff_initial_ms / 1000)
                continue
            fetched = await self.consumer.getmany(timeout_ms=poll_ms, max_records=self.settings.batch_size)
            now = time.monotonic()
            for tp, records in fetched.items():
                state = self.partitions.get(tp)
                if state is not None and state.recorded is not None:
                    state.extend(records, now)
            await self._enqueue_ready(queue, writer, final=False)
        if not writer.done():
            await self._enqueue_ready(queue, writer, final=True)

    async def _enqueue_ready(
        self, queue: asyncio.Queue[_Job | None], writer: asyncio.Task[None], *, final: bool
    ) -> None:
        timeout = self.settings.batch_timeout_ms / 1000
        for tp, state in list(self.partitions.items()):
            now = time.monotonic()
            due = state.first_buffered_at is not None and now - state.first_buffered_at >= timeout
            for cut in state.cuts(self.settings.batch_size, flush_partial=final or due):
                records = state.take(cut)
                batch, letters = batch_from_records(
                    tp.topic, tp.partition, cut.range, records, self.settings.default_namespace
                )
                # what the writer needs of it, computed here: the writer thread is the critical path
                batch = self.processor.prepare(batch)
                rec = state.records_by_start.get(cut.range.start) if cut.recorded else None
                if rec is not None and rec.digest != batch.digest:
                    log.warning("sink_ledger_digest_mismatch", partition=tp.partition, start=cut.range.start)
                    rec = LedgerRecord(rec.range_id, batch.digest, rec.stored_at_ms)
                state.done(cut, time.monotonic())
                job = _Job(tp, state, batch, letters, records, rec, final)
                self._queued.append(job)
                put = asyncio.ensure_future(queue.put(job))
                await asyncio.wait({put, writer}, return_when=asyncio.FIRST_COMPLETED)
                if not put.done():  # the writer died: stop instead of waiting on a queue nobody drains
                    put.cancel()
                    writer.result()
                    raise RuntimeError("the sink writer stopped")

    async def _writer(self, queue: asyncio.Queue[_Job | None]) -> None:
        while (job := await queue.get()) is not None:
            taken = self._queued.popleft()
            assert taken is job, "the writer takes jobs in the order they were queued"
            await self._write(job)

    async def _write(self, job: _Job) -> bool:
        """One batch, in the order it must happen: (1) record its range and write it, with its dead letters,
        until it sticks; (2) tell followers whose usage changed; (3) count it; (4) commit its offsets.
        False when abandoned (revoked, or shutdown) or when the commit lost the partition."""
        started = time.monotonic()
        written = await self._write_until_stored(job)
        if written is None:
            return False
        result, rec = written
        await self._announce(job.batch, rec)
        self._account(job, result)
        committed = await self._commit(job, result)
        if committed and self.metrics is not None:
            self.metrics.batch_events.observe(len(job.records))
            self.metrics.write_seconds.observe(time.monotonic() - started)
        return committed

    def _known_record(self, job: _Job) -> LedgerRecord | None:
        """The batch's ledger record if it exists already: found at assignment (a replay), or made ahead of
        this write together with an earlier batch's."""
        if job.record is not None:
            return job.record
        offsets = job.batch.range_id.range
        early = self._early.pop((job.tp, offsets.start), None)
        if early is not None and early.range_id == job.batch.range_id and early.digest == job.batch.digest:
            return early
        return None

    def _queued_behind(self) -> list[_Job]:
        """Queued batches with no record yet: recorded with this one, in one ledger insert."""
        return [
            j
            for j in self._queued
            if j.record is None and not j.state.revoked and (j.tp, j.batch.range_id.range.start) not in self._early
        ]

    def _record_and_write(self, job: _Job, attempt: _Attempt, behind: list[_Job]) -> BatchResult:
        """In a worker thread: record the range unless recorded (kept in `attempt` for the retries), then
        write the batch under it. A range found in the ledger at assignment may be partly stored (a replay)."""
        if attempt.record is None:
            recs = self.processor.record_many([(j.batch.range_id, j.batch.digest) for j in [job, *behind]])
            attempt.record = recs[0]
            for j, r in zip(behind, recs[1:], strict=True):
                self._early[(j.tp, j.batch.range_id.range.start)] = r
        return self.processor.write(job.batch, attempt.record, replay=job.record is not None)

    async def _write_until_stored(self, job: _Job) -> tuple[BatchResult, LedgerRecord] | None:
        """Step 1: retried unchanged with exponential backoff (partitions paused meanwhile); None if abandoned."""
        tp, state = job.tp, job.state
        offsets = job.batch.range_id.range
        attempt = _Attempt(self._known_record(job))
        backoff = self.settings.retry_backoff_initial_ms / 1000
        while True:
            if state.revoked:
                log.info("sink_batch_dropped_on_revoke", partition=tp.partition, start=offsets.start)
                return None
            if self._give_up_at is not None and time.monotonic() >= self._give_up_at:
                log.error("sink_shutdown_with_unwritten_batch", partition=tp.partition, start=offsets.start)
                return None
            try:
                async with self._write_lock:
                    if state.revoked:
                        continue  # checked and logged at the top of the loop
                    result = await asyncio.to_thread(self._record_and_write, job, attempt, self._queued_behind())
                conflicts = conflict_letters(tp.topic, tp.partition, result.conflicts, job.records)
                await self.dead_letters.send(job.letters + conflicts)
            except Exception as exc:  # noqa: BLE001 - every failure is retried unchanged; nothing committed
                self.counters.write_failures += 1
                log.warning(
                    "sink_write_failed",
                    partition=tp.partition,
                    start=offsets.start,
                    end=offsets.end,
                    retry_in_s=round(backoff, 3),
                    error=str(exc)[:300],
                )
                self._pause_all()
                if (self._stop.is_set() or job.final) and self._give_up_at is None:
                    self._give_up_at = time.monotonic() + SHUTDOWN_RETRY_SECONDS
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.settings.retry_backoff_max_ms / 1000)
                continue
            self._resume_all()
            assert attempt.record is not None
            return result, attempt.record

    async def _announce(self, batch: Batch, rec: LedgerRecord) -> None:
        """Step 2: stored and visible, so followers (API caches, webhooks) learn whose usage changed."""
        if self.notifications is None:
            return
        await self.notifications.publish_usage(*stored_groups(batch, rec))

    def _account(self, job: _Job, result: BatchResult) -> None:
        """Step 3: the counters, and a warning per conflict (same key, different payload)."""
        self.counters.add(job.batch, result)
        for conflict in result.conflicts:
            log.warning(
                "sink_event_conflict",
                partition=job.tp.partition,
                offset=conflict.offset,
                key=list(conflict.key),
                reason=conflict.reason,
            )

    async def _commit(self, job: _Job, result: BatchResult) -> bool:
        """Step 4: the offsets after the batch. A rebalance may have taken the partition: its next owner
        replays the recorded range (exactly once through the ledger)."""
        tp, offsets = job.tp, job.batch.range_id.range
        try:
            await self.consumer.commit({tp: offsets.end + 1})
        except KafkaError as exc:
            log.warning("sink_commit_failed", partition=tp.partition, end=offsets.end, error=str(exc))
            return False
        self._committed[tp] = offsets.end + 1
        log.debug(
            "sink_batch_committed",
            partition=tp.partition,
            start=offsets.start,
            end=offsets.end,
            stored=result.stored,
            duplicates=result.duplicates,
            malformed=len(job.batch.malformed),
        )
        return True

    def lag(self) -> dict[int, int]:
        """Per assigned partition: its high watermark (as of the last fetch) minus the committed offset."""
        out: dict[int, int] = {}
        for tp in self.partitions:
            high = self.consumer.highwater(tp)
            if high is not None:
                out[tp.partition] = max(0, high - self._committed.get(tp, 0))
        return out

    def _pause_all(self) -> None:
        if not self._paused:
            self._paused = True
            self.consumer.pause(*self.consumer.assignment())

    def _resume_all(self) -> None:
        if self._paused:
            self._paused = False
            ready = [tp for tp, s in self.partitions.items() if s.recorded is not None]
            self.consumer.resume(*ready)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)


@contextlib.asynccontextmanager
async def open_worker(
    clickhouse: ClickHouseSettings, kafka: KafkaSettings, sink: SinkSettings, *, clock: Clock | None = None
) -> AsyncIterator[SinkWorker]:
    """A started worker (ClickHouse migrated, consumer subscribed, dead-letter producer up); closes on exit."""
    if kafka.bootstrap_servers is None:
        raise ValueError("the sink worker needs kafka.bootstrap_servers (the embedded default has no worker)")
    ch: ClickHouse = await asyncio.to_thread(connect_clickhouse, clickhouse)
    await asyncio.to_thread(migrate_clickhouse, ch)
    processor = await asyncio.to_thread(
        lambda: BatchProcessor(ch, dedupe_window=sink.dedupe_window(), clock=clock or SystemClock())
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        client_id=f"{kafka.client_id}-sink",
        group_id=sink.consumer_group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=sink.session_timeout_ms,
        heartbeat_interval_ms=max(100, sink.session_timeout_ms // 3),
        max_partition_fetch_bytes=sink.max_partition_fetch_bytes,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers,
        client_id=f"{kafka.client_id}-dlq",
        acks="all",
        enable_idempotence=False,
    )
    await producer.start()
    notifications = KafkaNotificationPublisher(producer, kafka.notifications_topic)
    worker = SinkWorker(consumer, processor, KafkaDeadLetters(producer, kafka.dead_letter_topic), sink, notifications)
    if sink.metrics_port:
        worker.metrics = SinkMetrics(lambda: worker.counters, worker.lag)
        worker.metrics.serve(sink.metrics_port)
        log.info("sink_metrics_serving", port=sink.metrics_port)
    try:
        consumer.subscribe([kafka.events_topic], listener=worker.listener())
        await consumer.start()
        log.info("sink_worker_started", topic=kafka.events_topic, group=sink.consumer_group, compiled_decoder=NATIVE)
        yield worker
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
        with contextlib.suppress(Exception):
            await producer.stop()
        if not ch.embedded:
            ch.close()
        log.info("sink_worker_stopped", **dataclasses.asdict(worker.counters))


async def run_worker(
    clickhouse: ClickHouseSettings,
    kafka: KafkaSettings,
    sink: SinkSettings,
    *,
    stop: asyncio.Event | None = None,
    clock: Clock | None = None,
) -> SinkCounters:
    """Consume the events topic into ClickHouse until `stop` is set (or SIGTERM/SIGINT when it is None).

    On stop: the buffered batches are flushed and committed, then the consumer leaves the group.
    """
    own_stop = stop is None
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if own_stop:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    try:
        async with open_worker(clickhouse, kafka, sink, clock=clock) as worker:
            await worker.run(stop)
            return worker.counters
    finally:
        if own_stop:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
