"""The production path of HTTP ingest: POST /api/v1/events -> KafkaEventPublisher -> the events topic
(a real Kafka-protocol broker: tansu, or KAFKA_BOOTSTRAP_SERVERS)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from common.clickhouse import ClickHouse
from common.clock import FrozenClock
from common.errors import Unavailable
from common.settings import AuthSettings, ClickHouseSettings, KafkaSettings
from ingest.events_reader import ClickHouseEventsReader
from ingest.kafka_publisher import KafkaEventPublisher
from ingest.settings import SinkSettings
from ingest.sink.migrations import create_topics
from ingest.sink.worker import run_worker
from ingest.wire import message_key
from metergate.app import create_app
from metergate.wiring import Services
from tests.support.services import free_port

pytestmark = pytest.mark.integration

KEY = "kafka-test-key-0123456789"
NOW = datetime(2025, 5, 5, 5, 5, 5, 555000, tzinfo=UTC)


@pytest.fixture
async def kafka_settings(kafka_bootstrap_servers: str) -> KafkaSettings:
    suffix = uuid.uuid4().hex[:10]
    settings = KafkaSettings(
        bootstrap_servers=kafka_bootstrap_servers,
        events_topic=f"events_{suffix}",
        dead_letter_topic=f"dlq_{suffix}",
        topic_partitions=3,
    )
    await create_topics(settings)
    return settings


@pytest.fixture
async def client(clickhouse: ClickHouse, kafka_settings: KafkaSettings) -> AsyncIterator[httpx.AsyncClient]:
    publisher = KafkaEventPublisher(kafka_settings)
    await publisher.start()
    services = Services(
        clickhouse=clickhouse,
        publisher=publisher,
        clock=FrozenClock(NOW),
        events_reader=ClickHouseEventsReader(clickhouse),
    )
    services.on_close(publisher.close)
    app = create_app(services, AuthSettings(api_keys={KEY: "tenant-1"}))
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://metergate",
            headers={"Authorization": f"Bearer {KEY}"},
        ) as c:
            yield c
    finally:
        await services.close()


async def consume_all(settings: KafkaSettings, expected: int) -> list[object]:
    consumer = AIOKafkaConsumer(
        settings.events_topic,
        bootstrap_servers=settings.bootstrap_servers,
        group_id=f"g_{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
    )
    await consumer.start()
    messages: list[object] = []
    try:
        for _ in range(40):
            batches = await consumer.getmany(timeout_ms=250)
            for records in batches.values():
                messages.extend(records)
            if len(messages) >= expected:
                break
    finally:
        await consumer.stop()
    return messages


async def test_batch_is_published_with_key_headers_and_value(
    client: httpx.AsyncClient, kafka_settings: KafkaSettings
) -> None:
    batch = [
        {
            "specversion": "1.0",
            "id": f"e{i}",
            "source": "svc",
            "type": "tokens",
            "subject": f"s{i % 3}",
            "data": {"n": i},
        }
        for i in range(20)
    ]
    response = await client.post(
        "/api/v1/events", content=orjson.dumps(batch), headers={"Content-Type": "application/cloudevents-batch+json"}
    )
    assert response.status_code == 204, response.text

    messages = await consume_all(kafka_settings, 20)
    assert len(messages) == 20
    by_id = {}
    for m in messages:
        value = orjson.loads(m.value)  # type: ignore[attr-defined]
        headers = dict(m.headers)  # type: ignore[attr-defined]
        assert m.key == message_key("tenant-1", "svc", value["id"])  # type: ignore[attr-defined]
        assert headers["namespace"] == b"tenant-1"
        assert headers["content-type"] == b"application/cloudevents+json"
        assert headers["ingested_at"] == b"2025-05-05T05:05:05.555Z"
        by_id[value["id"]] = value
    assert by_id["e7"]["time"] == "2025-05-05T05:05:05.555Z"  # receipt time, ms kept
    assert by_id["e7"]["data"] == {"n": 7}
    assert by_id["e7"]["subject"] == "s1"


async def test_duplicates_share_a_partition(client: httpx.AsyncClient, kafka_settings: KafkaSettings) -> None:
    one = {"specversion": "1.0", "id": "dup", "source": "svc", "type": "t", "subject": "s"}
    for _ in range(3):
        response = await client.post(
            "/api/v1/events", content=orjson.dumps(one), headers={"Content-Type": "application/cloudevents+json"}
        )
        assert response.status_code == 204
    messages = await consume_all(kafka_settings, 3)
    assert len(messages) == 3
    assert len({m.partition for m in messages}) == 1  # type: ignore[attr-defined]


async def test_production_path_post_then_worker_then_get(
    client: httpx.AsyncClient, kafka_settings: KafkaSettings, clickhouse_settings: ClickHouseSettings
) -> None:
    """POST -> Kafka -> the sink worker (run_worker, same ClickHouse) -> GET, with a re-sent batch stored once."""
    batch = [
        {"specversion": "1.0", "id": f"p{i}", "source": "svc", "type": "calls", "subject": "acme", "data": {"n": i}}
        for i in range(30)
    ]
    for chunk in (batch[:20], batch[10:]):  # 10 events sent twice
        response = await client.post(
            "/api/v1/events",
            content=orjson.dumps(chunk),
            headers={"Content-Type": "application/cloudevents-batch+json"},
        )
        assert response.status_code == 204

    stop = asyncio.Event()
    sink = SinkSettings(consumer_group=f"sink_{uuid.uuid4().hex[:8]}", batch_timeout_ms=50, session_timeout_ms=2000)
    worker = asyncio.create_task(run_worker(clickhouse_settings, kafka_settings, sink, stop=stop))
    try:
        items: list[object] = []
        for _ in range(100):
            items = (await client.get("/api/v1/events", params={"limit": 100})).json()
            if len(items) >= 30 or worker.done():
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)
    assert sorted(i["event"]["id"] for i in items) == sorted(f"p{i}" for i in range(30))  # type: ignore[index]
    assert {i["ingestedAt"] for i in items} == {"2025-05-05T05:05:05.555Z"}  # type: ignore[index]


async def test_unreachable_broker_is_unavailable() -> None:
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")
    publisher = KafkaEventPublisher(settings, request_timeout_ms=1000)
    with pytest.raises(Unavailable):
        await publisher.start()
