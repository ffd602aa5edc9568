"""Publishing accepted events to the events topic (the production path of HTTP ingest).

Each event is one message in structured mode (see ingest/wire.py): key namespace+source+id so that
duplicates share a partition, the namespace in a header. acks="all" and no idempotence (tansu and
some brokers lack it): a retried request may publish an event twice, and the sink's dedupe on
(namespace, source, id) stores it once. `publish` returns only after every message is acknowledged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from common.cloudevents import CloudEvent
from common.errors import Unavailable
from common.settings import KafkaSettings
from ingest.wire import encode_event

log = structlog.get_logger(__name__)


class KafkaEventPublisher:
    def __init__(self, settings: KafkaSettings, *, request_timeout_ms: int = 30_000) -> None:
        if settings.bootstrap_servers is None:
            raise ValueError("KafkaEventPublisher needs kafka.bootstrap_servers")
        self._topic = settings.events_topic
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers,
            client_id=f"{settings.client_id}-api",
            acks="all",
            enable_idempotence=False,
            linger_ms=2,
            request_timeout_ms=request_timeout_ms,
            max_batch_size=1024 * 1024,
        )

    async def start(self) -> None:
        try:
            await self._producer.start()
        except KafkaError as exc:
            await self._producer.stop()
            raise Unavailable(f"cannot connect to Kafka: {exc}") from exc
        log.info("kafka_publisher_started", topic=self._topic)

    async def publish(self, namespace: str, events: Sequence[CloudEvent], ingested_at: datetime) -> None:
        sends = []
        try:
            for event in events:
                key, value, headers = encode_event(namespace, event, ingested_at)
                sends.append(await self._producer.send(self._topic, value=value, key=key, headers=headers))
            results = await asyncio.gather(*sends, return_exceptions=True)
        except KafkaError as exc:
            raise Unavailable(f"Kafka did not accept the events: {exc}") from exc
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            # Some may have been written: the client retries the whole request and the sink dedupes.
            log.warning("kafka_publish_failed", namespace=namespace, failed=len(failures), total=len(events))
            raise Unavailable(f"Kafka did not acknowledge {len(failures)} of {len(events)} events: {failures[0]}")

    async def close(self) -> None:
        await self._producer.stop()
