"""`metergate migrate`'s topic creation on a real broker: per-topic errors in the CreateTopics response
(aiokafka returns them, it does not raise) fail the migration with the broker's reason."""

from __future__ import annotations

import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from common.errors import Unavailable
from common.settings import KafkaSettings
from ingest.sink.migrations import create_topics, topic_errors

pytestmark = pytest.mark.integration


def settings(bootstrap: str, **extra: object) -> KafkaSettings:
    suffix = uuid.uuid4().hex[:8]
    return KafkaSettings.model_validate(
        {"bootstrap_servers": bootstrap, "events_topic": f"ev-{suffix}", "dead_letter_topic": f"dlq-{suffix}", **extra}
    )


async def test_topics_are_created_and_confirmed(kafka_bootstrap_servers: str) -> None:
    kafka = settings(kafka_bootstrap_servers, topic_partitions=2)
    assert sorted(await create_topics(kafka)) == sorted([kafka.events_topic, kafka.dead_letter_topic])
    assert await create_topics(kafka) == []  # idempotent


async def test_a_refused_topic_fails_with_the_brokers_reason(kafka_bootstrap_servers: str) -> None:
    """What the broker answers for an impossible topic (here: zero partitions) is a per-topic error."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap_servers)
    await admin.start()
    try:
        response = await admin.create_topics([NewTopic(f"bad-{uuid.uuid4().hex[:8]}", 0, 1)])
    finally:
        await admin.close()
    errors = topic_errors(response)
    if not errors:
        pytest.skip("this broker accepts a topic with 0 partitions: nothing to refuse")
    assert "bad-" in errors[0]
    assert "(" in errors[0]  # the error's name and code


async def test_migrate_does_not_report_a_refused_topic_as_created(kafka_bootstrap_servers: str) -> None:
    kafka = settings(kafka_bootstrap_servers, replication_factor=5)  # one broker: cannot hold 5 replicas
    try:
        created = await create_topics(kafka)
    except Unavailable as exc:
        assert "refused" in str(exc) or "missing" in str(exc)  # noqa: PT017 - either outcome is checked
        return
    # A broker that accepts it must really have the topics.
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap_servers)
    await admin.start()
    try:
        assert set(created) <= set(await admin.list_topics())
    finally:
        await admin.close()


def test_per_topic_errors_are_read_off_the_protocol_response() -> None:
    """A real Kafka broker's answer to an impossible replication factor (tansu accepts everything)."""
    from aiokafka.protocol.admin import CreateTopicsResponse_v1

    response = CreateTopicsResponse_v1(
        topic_errors=[
            ("ok", 0, None),
            ("exists", 36, "Topic 'exists' already exists."),
            ("bad", 38, "Replication factor: 5 larger than available brokers: 1."),
        ]
    )
    assert topic_errors(response) == [
        "bad: InvalidReplicationFactorError (38): Replication factor: 5 larger than available brokers: 1."
    ]
    assert topic_errors(None) == []


async def test_the_events_topic_gets_its_retention(kafka_bootstrap_servers: str) -> None:
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    kafka = settings(kafka_bootstrap_servers, events_retention_days=40)
    await create_topics(kafka)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap_servers)
    await admin.start()
    try:
        described = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, kafka.events_topic)])
    except Exception as exc:  # noqa: BLE001 - a broker without DescribeConfigs: nothing to read back
        pytest.skip(f"this broker cannot describe topic configs: {exc}")
    finally:
        await admin.close()
    entries = {str(e[0]): e[1] for r in described for res in r.resources for e in res[4]}
    if "retention.ms" not in entries:
        pytest.skip("this broker does not report retention.ms")
    assert entries["retention.ms"] == str(40 * 86_400_000)
