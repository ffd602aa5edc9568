"""The ingest notification stream on a real Kafka-protocol broker (tansu) and the real engine (chdb):
sink workers announce committed batches, API processes announce state changes, and every API process's
balance cache follows the topic, so warm value reads stay exact across processes."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from aggregator.repository import ClickHouseMeterRepository
from common.clickhouse import ClickHouse
from common.ingest_notifications import EventGroup, IngestNotification
from common.settings import AuthSettings, ClickHouseSettings, DatabaseSettings, KafkaSettings
from entitlements.db.migrate import upgrade_database
from ingest.notification_stream import KafkaNotificationFollower, KafkaNotificationPublisher
from ingest.settings import SinkSettings
from ingest.sink.migrations import migrate_clickhouse
from ingest.sink.worker import run_worker
from metergate.app import create_app
from metergate.settings import ApiServiceSettings
from metergate.wiring import Services, build_services
from tests.support.services import fresh_postgres_database
from tests.support.sink_kafka import kafka_settings, make_topics

pytestmark = pytest.mark.integration


async def eventually(check: Callable[[], Any], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def producer_for(kafka: KafkaSettings) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


async def test_publishers_followers_ticks_and_blindness(kafka_bootstrap_servers: str) -> None:
    kafka = kafka_settings(kafka_bootstrap_servers, partitions=1)
    await make_topics(kafka)
    usage: list[IngestNotification] = []
    changes: list[tuple[str, int, Sequence[tuple[str, str]]]] = []
    events: list[str] = []
    async with producer_for(kafka) as producer:
        own = KafkaNotificationPublisher(producer, kafka.notifications_topic, tick_interval=0.2)
        worker = KafkaNotificationPublisher(producer, kafka.notifications_topic)
        other = KafkaNotificationPublisher(producer, kafka.notifications_topic)
        follower = KafkaNotificationFollower(kafka, own_stream=own.stream, blind_after=1.0)
        follower.usage_listeners.append(usage.extend)
        follower.change_listeners.append(lambda s, n, c: changes.append((s, n, c)))
        follower.sight_listeners.append(lambda: events.append("sight"))
        follower.blind_listeners.append(lambda: events.append("blind"))
        await follower.start()
        try:
            await own.start()
            await eventually(lambda: events == ["sight"])
            t = datetime(2025, 1, 1, tzinfo=UTC)
            groups = [EventGroup("ns", "acme", "calls", t, t), EventGroup("ns", "globex", "calls", t, t)]
            assert await worker.publish_usage(groups, t)
            other.change("ns", "acme")
            await other.start()
            own.change("ns", "ignored-own-change")
            await eventually(lambda: len(usage) == 2 and len(changes) == 1)
            assert [(n.namespace, n.subject, n.sequence, n.stream) for n in usage] == [
                ("ns", "acme", 1, worker.stream),
                ("ns", "globex", 1, worker.stream),
            ]
            assert changes[0][0] == other.stream
            assert list(changes[0][2]) == [("ns", "acme")]
            # This process's ticks stop (its producer side is gone): the follower goes blind, then sees again.
            await own.close()
            await eventually(lambda: events == ["sight", "blind"], within=5)
            await own.start()
            await eventually(lambda: events == ["sight", "blind", "sight"], within=5)
        finally:
            await own.close()
            await other.close()
            await follower.close()


class Replica:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(services, AuthSettings(enabled=False))),
            base_url="http://test",
        )

    @property
    def cache(self) -> Any:
        assert self.services.entitlements is not None
        return self.services.entitlements.values.cache

    async def call(self, method: str, path: str, body: object = None, status: int = 200) -> Any:
        content = None if body is None else orjson.dumps(body)
        r = await self.client.request(method, path, content=content, headers={"Content-Type": "application/json"})
        assert r.status_code == status, r.text
        return r.json() if r.content else None

    async def value(self) -> dict[str, Any]:
        body: dict[str, Any] = await self.call("GET", "/api/v1/subjects/acme/entitlements/api/value")
        return body


@contextlib.asynccontextmanager
async def replica(settings: ApiServiceSettings, clickhouse: ClickHouse) -> AsyncIterator[Replica]:
    services = await build_services(settings, clickhouse=clickhouse)
    r = Replica(services)
    try:
        await eventually(lambda: not r.cache.suspended)  # the follower saw its own tick: the cache is on
        yield r
    finally:
        await r.client.aclose()
        await services.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with fresh_postgres_database("mg_replicas") as url:
        yield url


async def test_warm_reads_follow_ingest_and_other_replicas(
    kafka_bootstrap_servers: str, clickhouse: ClickHouse, clickhouse_settings: ClickHouseSettings, postgres_url: str
) -> None:
    """Two API processes sharing one PostgreSQL, a sink worker, one broker: a write through one and usage
    through the worker reach the other's warm reads."""
    kafka = kafka_settings(kafka_bootstrap_servers, partitions=2)
    await make_topics(kafka)
    await asyncio.to_thread(migrate_clickhouse, clickhouse)
    await asyncio.to_thread(ClickHouseMeterRepository(clickhouse).migrate)
    db = postgres_url
    await asyncio.to_thread(upgrade_database, db)
    settings = ApiServiceSettings(
        clickhouse=clickhouse_settings, kafka=kafka, database=DatabaseSettings(url=db), auth=AuthSettings(enabled=False)
    )
    sink = SinkSettings(consumer_group=f"sink-{uuid.uuid4().hex[:8]}", batch_timeout_ms=50, session_timeout_ms=2000)
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(clickhouse_settings, kafka, sink, stop=stop))
    try:
        async with replica(settings, clickhouse) as a:
            await a.call("POST", "/api/v1/meters", {"slug": "calls", "aggregation": "COUNT", "eventType": "call"}, 201)
            async with replica(settings, clickhouse) as b:  # started after the meter exists: it loads it
                await a.call("POST", "/api/v1/features", {"key": "api", "name": "API", "meterSlug": "calls"}, 201)
                ent = {"type": "metered", "featureKey": "api", "usagePeriod": {"interval": "MONTH"}}
                await a.call("POST", "/api/v1/subjects/acme/entitlements", ent, 201)
                grant = {
                    "amount": 100,
                    "effectiveAt": "2020-01-01T00:00:00Z",
                    "expiration": {"duration": "YEAR", "count": 99},
                }
                await a.call("POST", "/api/v1/subjects/acme/entitlements/api/grants", grant, 201)
                # B has met A's stream (a new publisher: one gap, B's cache dropped once); then B answers warm.
                await eventually(lambda: b.cache.stats.gaps >= 1)

                async def b_answers_warm() -> bool:
                    hits = b.cache.stats.hits
                    assert (await b.value())["balance"] == 100
                    return b.cache.stats.hits > hits

                await eventually(b_answers_warm)

                # Events through A -> Kafka -> the worker -> ClickHouse -> the notification -> B's cache drops.
                now = datetime.now(UTC).isoformat()
                batch = [
                    {"specversion": "1.0", "id": f"e{i}", "source": "t", "type": "call", "subject": "acme", "time": now}
                    for i in range(3)
                ]
                r = await a.client.post(
                    "/api/v1/events",
                    content=orjson.dumps(batch),
                    headers={"Content-Type": "application/cloudevents-batch+json"},
                )
                assert r.status_code == 204, r.text

                async def b_sees_usage() -> bool:
                    return (await b.value())["usage"] == 3

                await eventually(b_sees_usage)
                assert b.cache.stats.invalidations > 0  # an ingest notification dropped B's entry
                assert not b.cache.suspended

                # A grant written through A reaches B's cache as a state change.
                assert (await b.value())["balance"] == 97
                await a.call("POST", "/api/v1/subjects/acme/entitlements/api/grants", {**grant, "amount": 50}, 201)

                async def b_sees_grant() -> bool:
                    return (await b.value())["balance"] == 147

                await eventually(b_sees_grant, within=10)
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)
