"""The ingest notification stream on Kafka: sink workers publish what each committed batch stored, API
processes publish their entitlement state changes, and every API process follows the topic.

Format and follower rules: common.ingest_notifications. One topic (`kafka.notifications_topic`, created by
`metergate migrate`, one partition so every follower sees one order), messages keyed by publisher stream.

- **Publisher** (`KafkaNotificationPublisher`): one stream id per process and a sequence per message. A send
  that fails is logged and counted, and leaves a hole in the sequence, so followers drop everything they
  derived at the next message they see from that stream. API processes also send a tick every
  `tick_interval` seconds: the proof, for their own follower, that the topic is being followed.
- **Follower** (`KafkaNotificationFollower`): no consumer group (every API process reads every message),
  from the end of the topic at start. Usage notes and other processes' state changes go to the listeners.
  While the follower has not seen its own process's tick for `blind_after` seconds (broker unreachable, the
  follower stalled or lagging), it calls `on_blind` (the balance cache suspends itself); when ticks come
  back it calls `on_sight` (the cache resumes, empty).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from common.ingest_notifications import (
    EventGroup,
    IngestListener,
    decode_message,
    encode_changes,
    encode_usage,
)
from common.settings import KafkaSettings

log = structlog.get_logger(__name__)

ChangesListener = Callable[[str, int, Sequence[tuple[str, str]]], None]
SEND_TIMEOUT_S = 10.0


class KafkaNotificationPublisher:
    def __init__(self, producer: AIOKafkaProducer, topic: str, *, tick_interval: float | None = None) -> None:
        self.producer = producer
        self.topic = topic
        self.stream = uuid.uuid4().hex
        self.tick_interval = tick_interval
        self.sent = 0
        self.failures = 0
        self._sequence = itertools.count(1)
        self._pending: list[tuple[str, str]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def publish_usage(self, groups: Sequence[EventGroup], stored_at: datetime) -> bool:
        """After a batch is stored and visible, before its offsets are committed."""
        if not groups:
            return True
        return await self._send(encode_usage(self.stream, next(self._sequence), groups, stored_at))

    def change(self, namespace: str, key: str) -> None:
        """A committed state change (Deps.change_listeners): sent in the background, batched."""
        self._pending.append((namespace, key))
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._flush_loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pending:
            await self._flush()

    async def _flush_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tick_interval)
            self._wake.clear()
            if self._pending or self.tick_interval is not None:
                await self._flush()

    async def _flush(self) -> None:
        changes, self._pending = self._pending, []
        await self._send(encode_changes(self.stream, next(self._sequence), list(dict.fromkeys(changes))))

    async def _send(self, value: bytes) -> bool:
        try:
            await asyncio.wait_for(
                self.producer.send_and_wait(self.topic, value, key=self.stream.encode()), SEND_TIMEOUT_S
            )
        except Exception as exc:  # noqa: BLE001 - the hole in the sequence tells followers; ingest goes on
            self.failures += 1
            log.warning("notification_send_failed", topic=self.topic, stream=self.stream, error=str(exc)[:300])
            return False
        self.sent += 1
        return True


class KafkaNotificationFollower:
    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        own_stream: str | None = None,
        blind_after: float = 5.0,
    ) -> None:
        assert kafka.bootstrap_servers is not None
        self.kafka = kafka
        self.own_stream = own_stream
        self.blind_after = blind_after
        self.usage_listeners: list[IngestListener] = []
        self.change_listeners: list[ChangesListener] = []
        self.blind_listeners: list[Callable[[], None]] = []
        self.sight_listeners: list[Callable[[], None]] = []
        self.received = 0
        self.malformed = 0
        self.seeing = False
        self._last_own = time.monotonic()
        self._consumer: AIOKafkaConsumer | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.kafka.bootstrap_servers,
            client_id=f"{self.kafka.client_id}-notifications",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
        )
        await consumer.start()
        partitions = consumer.partitions_for_topic(self.kafka.notifications_topic)
        if not partitions:
            await consumer.stop()
            raise RuntimeError(
                f"the notification topic {self.kafka.notifications_topic!r} does not exist: run `metergate migrate`"
            )
        tps = [TopicPartition(self.kafka.notifications_topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        self._consumer = consumer
        self._last_own = time.monotonic()
        self._tasks = [asyncio.create_task(self._consume()), asyncio.create_task(self._watch())]
        log.info("notification_follower_started", topic=self.kafka.notifications_topic)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._consumer is not None:
            await self._consumer.stop()

    async def _consume(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=500, max_records=10_000)
            except Exception as exc:  # noqa: BLE001 - the watchdog turns a long silence into blindness
                log.warning("notification_follow_failed", error=str(exc)[:300])
                await asyncio.sleep(1)
                continue
            for records in batches.values():
                for record in records:
                    self._dispatch(record.value)

    def _dispatch(self, value: bytes | None) -> None:
        self.received += 1
        try:
            message = decode_message(value or b"")
        except ValueError as exc:
            self.malformed += 1
            log.warning("notification_malformed", error=str(exc)[:200])
            return
        if message.stream == self.own_stream:
            self._last_own = time.monotonic()
            if not self.seeing:
                self._call(self.sight_listeners)
                self.seeing = True
            return  # this process's own changes invalidated its cache before its writes answered
        if message.usage:
            for listener in self.usage_listeners:
                _safely(listener, list(message.usage))
        else:
            for changes_listener in self.change_listeners:
                _safely(changes_listener, message.stream, message.sequence, message.changes)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.blind_after / 4))
            if self.own_stream is None:
                continue
            if self.seeing and time.monotonic() - self._last_own > self.blind_after:
                log.warning("notification_follower_blind", silent_for_s=round(time.monotonic() - self._last_own, 1))
                self.seeing = False
                self._call(self.blind_listeners)

    def _call(self, listeners: list[Callable[[], None]]) -> None:
        for listener in listeners:
            _safely(listener)


def _safely(fn: Callable[..., None], *args: object) -> None:
    try:
        fn(*args)
    except Exception:
        log.exception("notification_listener_failed", listener=getattr(fn, "__qualname__", repr(fn)))
