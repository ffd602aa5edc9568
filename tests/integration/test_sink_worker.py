"""The sink worker on a real broker (tansu) and engine (chdb): exactly the unique valid events, dead
letters for the malformed and the conflicting, and nothing lost or doubled while ClickHouse fails."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from common.clickhouse import ClickHouse
from common.settings import ClickHouseSettings, KafkaSettings
from ingest.settings import SinkSettings
from ingest.sink.dlq import KIND_HEADER, REASON_HEADER
from ingest.sink.migrations import migrate_clickhouse
from ingest.sink.processor import SinkCounters
from ingest.sink.worker import run_worker
from tests.support.sink_kafka import kafka_settings, make_topics, produce, read_all, wait_until_committed
from tests.support.sink_stream import Message, Stream, build_stream

pytestmark = pytest.mark.integration

PARTITIONS = 4


def sink_settings(**overrides: object) -> SinkSettings:
    values: dict[str, object] = {
        "consumer_group": f"sink-{uuid.uuid4().hex[:8]}",
        "session_timeout_ms": 2000,
        "batch_timeout_ms": 200,
        "retry_backoff_initial_ms": 50,
        "retry_backoff_max_ms": 500,
    }
    values.update(overrides)
    return SinkSettings.model_validate(values)


@contextlib.asynccontextmanager
async def running_worker(
    ch_settings: ClickHouseSettings, kafka: KafkaSettings, sink: SinkSettings
) -> AsyncIterator[asyncio.Task[SinkCounters]]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(ch_settings, kafka, sink, stop=stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def table_contents(ch: ClickHouse) -> list[tuple[str, str, str, str]]:
    return [
        (str(r[0]), str(r[1]), str(r[2]), str(r[3]))
        for r in ch.rows(f"SELECT namespace, source, id, data FROM {ch.table('events')}")
    ]


def assert_exact(ch: ClickHouse, stream: Stream) -> None:
    rows = table_contents(ch)
    keys = [(ns, src, i) for ns, src, i, _ in rows]
    assert len(keys) == len(set(keys)), f"{len(keys) - len(set(keys))} events stored twice"
    assert {(ns, src, i): data for ns, src, i, data in rows} == stream.expected


@pytest.mark.slow
async def test_50k_with_duplicates_conflicts_and_malformed(
    kafka_bootstrap_servers: str, clickhouse: ClickHouse, clickhouse_settings: ClickHouseSettings
) -> None:
    stream = build_stream(46_600, duplicate_rate=0.05, conflict_rate=0.01, malformed_rate=0.01)
    assert 49_000 < len(stream.messages) < 51_000
    kafka = kafka_settings(kafka_bootstrap_servers, PARTITIONS)
    await make_topics(kafka)
    ends = await produce(kafka_bootstrap_servers, kafka.events_topic, stream.messages)
    sink = sink_settings(batch_size=5000)
    async with running_worker(clickhouse_settings, kafka, sink) as task:
        await wait_until_committed(kafka_bootstrap_servers, sink.consumer_group, kafka.events_topic, ends, within=120)
    counters = task.result()
    assert_exact(clickhouse, stream)
    assert counters.malformed == stream.malformed
    assert counters.conflicts == stream.conflicts
    assert counters.duplicates == stream.duplicates

    letters = await read_all(
        kafka_bootstrap_servers, kafka.dead_letter_topic, PARTITIONS, stream.malformed + stream.conflicts
    )
    kinds = [dict(rec.headers)[KIND_HEADER].decode() for rec in letters]  # type: ignore[attr-defined]
    assert kinds.count("malformed") == stream.malformed
    assert kinds.count("conflict") == stream.conflicts
    assert all(dict(rec.headers)[REASON_HEADER] for rec in letters)  # type: ignore[attr-defined]


async def test_clickhouse_failure_loses_nothing_and_doubles_nothing(
    kafka_bootstrap_servers: str, clickhouse: ClickHouse, clickhouse_settings: ClickHouseSettings
) -> None:
    """DETACH the events table mid-stream (a real engine error for every insert and key check), then
    ATTACH it back: the worker backs off with its partitions paused and resumes with nothing lost."""
    await asyncio.to_thread(migrate_clickhouse, clickhouse)
    stream = build_stream(12_000, duplicate_rate=0.05, conflict_rate=0.01, malformed_rate=0.0, seed=11)
    kafka = kafka_settings(kafka_bootstrap_servers, PARTITIONS)
    await make_topics(kafka)
    sink = sink_settings(batch_size=500)
    table = clickhouse.table("events")
    outage_done = threading.Event()

    def outage() -> None:
        clickhouse.command(f"DETACH TABLE {table}")
        time.sleep(2.0)
        clickhouse.command(f"ATTACH TABLE {table}")
        outage_done.set()

    async with running_worker(clickhouse_settings, kafka, sink) as task:
        half = len(stream.messages) // 2
        first = await produce(kafka_bootstrap_servers, kafka.events_topic, stream.messages[:half])
        # the worker is writing (its key set is loaded: loading it also reads the events table)
        await wait_until_committed(kafka_bootstrap_servers, sink.consumer_group, kafka.events_topic, first, within=60)
        thread = threading.Thread(target=outage)
        thread.start()
        second = await produce(kafka_bootstrap_servers, kafka.events_topic, stream.messages[half:])
        ends = {p: max(first.get(p, 0), second.get(p, 0)) for p in range(PARTITIONS)}
        await asyncio.to_thread(thread.join)
        await wait_until_committed(kafka_bootstrap_servers, sink.consumer_group, kafka.events_topic, ends, within=120)
    counters = task.result()
    assert outage_done.is_set()
    assert counters.write_failures > 0, "the outage did not hit the worker"
    assert_exact(clickhouse, stream)


async def test_rebalances_while_consuming_lose_nothing_and_double_nothing(
    kafka_bootstrap_servers: str, clickhouse: ClickHouse, clickhouse_settings: ClickHouseSettings
) -> None:
    """A second worker joins mid-stream (the first one's partitions are revoked and split), then the
    first one leaves (the second one takes everything and replays what was recorded but not committed)."""
    await asyncio.to_thread(migrate_clickhouse, clickhouse)
    stream = build_stream(12_000, duplicate_rate=0.05, conflict_rate=0.0, malformed_rate=0.0, seed=5)
    kafka = kafka_settings(kafka_bootstrap_servers, PARTITIONS)
    await make_topics(kafka)
    sink = sink_settings(batch_size=300, batch_timeout_ms=50)
    ends: dict[int, int] = {}

    async def send(messages: list[Message]) -> None:
        for p, end in (await produce(kafka_bootstrap_servers, kafka.events_topic, messages)).items():
            ends[p] = max(ends.get(p, 0), end)

    # order matters only within a key, and every copy of a key lands in the same third
    by_key: dict[bytes | None, int] = {}
    thirds: list[list[Message]] = [[], [], []]
    for message in stream.messages:
        third = by_key.setdefault(message[0], len(by_key) % 3)
        thirds[third].append(message)
    first_stop = asyncio.Event()
    first = asyncio.create_task(run_worker(clickhouse_settings, kafka, sink, stop=first_stop))
    await send(thirds[0])
    async with running_worker(clickhouse_settings, kafka, sink):
        await send(thirds[1])
        await asyncio.sleep(1.5)
        first_stop.set()
        await asyncio.wait_for(first, 30)
        await send(thirds[2])
        await wait_until_committed(kafka_bootstrap_servers, sink.consumer_group, kafka.events_topic, ends, within=120)
    assert_exact(clickhouse, stream)
