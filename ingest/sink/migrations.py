"""Idempotent set-up of what the ingest pipeline needs: ClickHouse tables and Kafka topics.

`metergate migrate` calls both; the worker and the embedded log also call `migrate_clickhouse` at start
so a fresh embedded engine works with no manual step.
"""

from __future__ import annotations

import contextlib
from typing import Any

import structlog

from common.clickhouse import ClickHouse
from common.errors import Unavailable
from common.events_table import events_table_ddl
from common.settings import KafkaSettings
from ingest.sink.dlq import dead_letters_table_ddl
from ingest.sink.ledger import ledger_table_ddl

log = structlog.get_logger(__name__)


def ingest_schema_sql(database: str) -> list[str]:
    """The database, the events table, the sink ledger and the dead-letters table (idempotent statements)."""
    return [
        f"CREATE DATABASE IF NOT EXISTS `{database}`",
        events_table_ddl(database),
        ledger_table_ddl(database),
        dead_letters_table_ddl(database),
    ]


def migrate_clickhouse(ch: ClickHouse) -> None:
    """Create the events table, the sink ledger and the dead-letters table if missing (blocking)."""
    for ddl in ingest_schema_sql(ch.database):
        ch.command(ddl)


TOPIC_ALREADY_EXISTS = 36


def topic_errors(response: Any) -> list[str]:
    """`topic: error name (code): message` for each topic a CreateTopics response did not create."""
    out: list[str] = []
    for entry in getattr(response, "topic_errors", None) or ():
        topic, code = entry[0], int(entry[1])
        message = entry[2] if len(entry) > 2 and entry[2] else ""
        if code in (0, TOPIC_ALREADY_EXISTS):
            continue
        from aiokafka.errors import for_code

        name = for_code(code).__name__
        out.append(f"{topic}: {name} ({code}){': ' + message if message else ''}")
    return out


async def create_topics(kafka: KafkaSettings) -> list[str]:
    """Create the events, dead-letter and notification topics if missing; returns the topics it created.

    The notification topic has one partition (every follower sees one order) and a short retention
    (followers read from its end)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaError, TopicAlreadyExistsError

    if kafka.bootstrap_servers is None:
        return []
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers, client_id=f"{kafka.client_id}-migrate")
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        topics = (kafka.events_topic, kafka.dead_letter_topic, kafka.notifications_topic)
        wanted = [t for t in topics if t not in existing]
        if wanted:
            configs = {
                kafka.events_topic: {"retention.ms": str(kafka.events_retention_days * 86_400_000)},
                kafka.notifications_topic: {"retention.ms": str(kafka.notifications_retention_hours * 3_600_000)},
            }
            new = [
                NewTopic(
                    t,
                    1 if t == kafka.notifications_topic else kafka.topic_partitions,
                    kafka.replication_factor,
                    topic_configs=configs.get(t, {}),
                )
                for t in wanted
            ]
            response: Any = None
            with contextlib.suppress(TopicAlreadyExistsError):  # created concurrently: fine
                response = await admin.create_topics(new)
            # aiokafka returns per-topic errors in the response instead of raising: only success and
            # "already exists" (created concurrently) are fine, anything else is the broker's refusal.
            refused = topic_errors(response)
            if refused:
                raise Unavailable("the broker refused to create Kafka topics: " + "; ".join(refused))
            missing = sorted(set(wanted) - set(await admin.list_topics()))
            if missing:
                raise Unavailable(f"Kafka topics {missing} are still missing after creating them")
            log.info("kafka_topics_created", topics=wanted, partitions=kafka.topic_partitions)
        return wanted
    except KafkaError as exc:
        raise Unavailable(f"cannot create Kafka topics: {exc}") from exc
    finally:
        await admin.close()
