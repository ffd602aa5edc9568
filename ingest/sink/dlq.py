"""Dead letters: malformed messages and conflicting copies, with the reason, kept for a human.

Two adapters of one port: the Kafka dead-letter topic (the worker) and a ClickHouse table (the
embedded log, which has no broker). Dead letters are at least once: a replayed batch sends its
dead letters again, and the original position (topic, partition, offset) tells copies apart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from common.clickhouse import ClickHouse

DEAD_LETTERS_TABLE = "dead_letters"
REASON_HEADER = "dlq_reason"
KIND_HEADER = "dlq_kind"
TOPIC_HEADER = "dlq_topic"
PARTITION_HEADER = "dlq_partition"
OFFSET_HEADER = "dlq_offset"
MAX_REASON_CHARS = 1000


@dataclass(frozen=True, slots=True)
class DeadLetter:
    kind: str  # "malformed" or "conflict"
    reason: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()

    def dlq_headers(self) -> list[tuple[str, bytes]]:
        own = [
            (KIND_HEADER, self.kind.encode()),
            (REASON_HEADER, self.reason[:MAX_REASON_CHARS].encode("utf-8", "replace")),
            (TOPIC_HEADER, self.topic.encode()),
            (PARTITION_HEADER, str(self.partition).encode()),
            (OFFSET_HEADER, str(self.offset).encode()),
        ]
        return own + [h for h in self.headers if not h[0].startswith("dlq_")]


class DeadLetterSink(Protocol):
    async def send(self, letters: Sequence[DeadLetter]) -> None:
        """Durably keep the letters (all, or raise)."""
        ...


class KafkaDeadLetters:
    """The dead-letter topic; `producer` is a started AIOKafkaProducer (acks=all)."""

    def __init__(self, producer: Any, topic: str) -> None:
        self._producer = producer
        self._topic = topic

    async def send(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        futures = [
            # Kafka needs a key or a value; an empty key keeps an empty message a dead letter
            await self._producer.send(
                self._topic,
                value=d.value,
                key=d.key if d.key is not None or d.value is not None else b"",
                headers=d.dlq_headers(),
            )
            for d in letters
        ]
        await asyncio.gather(*futures)


def dead_letters_table_ddl(database: str) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS `{database}`.`{DEAD_LETTERS_TABLE}`
(
    recorded_at DateTime64(3, 'UTC') DEFAULT now64(3),
    kind LowCardinality(String) COMMENT 'malformed or conflict',
    reason String,
    topic LowCardinality(String),
    partition Int32,
    offset Int64,
    key String,
    value String
)
ENGINE = MergeTree
ORDER BY (recorded_at, topic, partition, offset)
TTL toDateTime(recorded_at) + INTERVAL 90 DAY
"""


class ClickHouseDeadLetters:
    """Dead letters in a ClickHouse table, for the embedded log."""

    def __init__(self, ch: ClickHouse) -> None:
        self._ch = ch

    async def send(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        rows = [
            (
                d.kind,
                d.reason[:MAX_REASON_CHARS],
                d.topic,
                d.partition,
                d.offset,
                (d.key or b"").decode("utf-8", "replace"),
                (d.value or b"").decode("utf-8", "replace"),
            )
            for d in letters
        ]
        table = self._ch.table(DEAD_LETTERS_TABLE)
        columns = ["kind", "reason", "topic", "partition", "offset", "key", "value"]
        settings = self._ch.supported({"async_insert": 0})
        await self._ch.run(lambda c: c.insert(table, rows, column_names=columns, settings=settings))
