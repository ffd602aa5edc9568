"""Kafka helpers for the sink tests (real broker: tansu or KAFKA_BOOTSTRAP_SERVERS)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from common.settings import KafkaSettings
from ingest.sink.migrations import create_topics
from tests.support.sink_stream import Message


def kafka_settings(bootstrap: str, partitions: int = 4) -> KafkaSettings:
    suffix = uuid.uuid4().hex[:10]
    return KafkaSettings(
        bootstrap_servers=bootstrap,
        events_topic=f"events-{suffix}",
        dead_letter_topic=f"dlq-{suffix}",
        notifications_topic=f"notes-{suffix}",
        topic_partitions=partitions,
    )


async def make_topics(kafka: KafkaSettings) -> None:
    await create_topics(kafka)


async def produce(bootstrap: str, topic: str, messages: Sequence[Message]) -> dict[int, int]:
    """Send the messages in order; returns the offset after the last one written, per partition."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value=v, key=k, headers=h) for k, v, h in messages]
        ends: dict[int, int] = {}
        for meta in await asyncio.gather(*futures):
            ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
        return ends
    finally:
        await producer.stop()


async def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    """The broker's end offsets. tansu reports less than it holds here: prefer what `produce` returns."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        return {tp.partition: int(v) for tp, v in ends.items()}
    finally:
        await consumer.stop()


async def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        out = {}
        for p in range(partitions):
            value = await consumer.committed(TopicPartition(topic, p))
            out[p] = -1 if value is None else int(value)
        return out
    finally:
        await consumer.stop()


async def wait_until_committed(bootstrap: str, group: str, topic: str, ends: dict[int, int], within: float) -> None:
    partitions = max(ends) + 1
    deadline = time.monotonic() + within
    while True:
        committed = await committed_offsets(bootstrap, group, topic, partitions)
        if all(committed[p] >= ends[p] for p in ends):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not all consumed: committed {committed}, end {ends}")
        await asyncio.sleep(0.3)


async def read_all(bootstrap: str, topic: str, partitions: int, count: int) -> list[object]:
    """The first `count` records of a topic, all partitions."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[object] = []
        deadline = time.monotonic() + 30
        while len(records) < count:
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                records.extend(recs)
            if time.monotonic() > deadline:
                raise AssertionError("could not read the whole topic")
        return records
    finally:
        await consumer.stop()
