"""Publishing with the official CloudEvents SDK (PyPI `cloudevents`) in every mode the README documents,
end to end into ClickHouse: Kafka binary and structured mode on a real broker (tansu) through the sink
worker, with and without `datacontenttype`, bytes data (`data_base64`) included."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from cloudevents.http import CloudEvent as SdkEvent
from cloudevents.kafka import to_binary, to_structured

from common.clickhouse import ClickHouse
from common.settings import ClickHouseSettings
from ingest.sink.dlq import REASON_HEADER
from tests.integration.test_sink_worker import running_worker, sink_settings
from tests.support.sink_kafka import kafka_settings, make_topics, produce, read_all, wait_until_committed

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def sdk_event(event_id: str, *, content_type: bool, data: object = None) -> SdkEvent:
    attributes: dict[str, object] = {
        "type": "tokens",
        "source": "sdk-svc",
        "subject": "customer-1",
        "id": event_id,
        "time": NOW.isoformat(),
    }
    if content_type:
        attributes["datacontenttype"] = "application/json"
    return SdkEvent(attributes, data if data is not None else {"tokens": 10, "model": "gpt-4"})


def message(event: SdkEvent, *, binary: bool) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    kafka = to_binary(event) if binary else to_structured(event)
    key = f"default\x00{event['source']}\x00{event['id']}".encode()  # the key the README documents
    return key, kafka.value, list(kafka.headers.items())


async def test_every_sdk_kafka_mode_is_stored_exactly(
    kafka_bootstrap_servers: str, clickhouse: ClickHouse, clickhouse_settings: ClickHouseSettings
) -> None:
    kafka = kafka_settings(kafka_bootstrap_servers, 2)
    await make_topics(kafka)
    run = uuid.uuid4().hex[:6]
    messages = [
        # the SDK's binary mode needs datacontenttype; its structured mode labels the message with it
        message(sdk_event(f"{run}-bin", content_type=True), binary=True),
        message(sdk_event(f"{run}-str-ct", content_type=True), binary=False),
        message(sdk_event(f"{run}-str", content_type=False), binary=False),
        # bytes data holding JSON travels as data_base64 in structured mode
        message(sdk_event(f"{run}-b64", content_type=False, data=b'{"tokens": 7, "model": "m"}'), binary=False),
        # bytes data that is not JSON: dead-lettered with a reason that says what to send
        message(sdk_event(f"{run}-raw", content_type=False, data=b"\x00\x01not-json"), binary=False),
    ]
    ends = await produce(kafka_bootstrap_servers, kafka.events_topic, messages)
    sink = sink_settings()
    async with running_worker(clickhouse_settings, kafka, sink):
        await wait_until_committed(kafka_bootstrap_servers, sink.consumer_group, kafka.events_topic, ends, within=60)
    rows = {
        str(r[0]): (str(r[1]), str(r[2]), str(r[3]), r[4])
        for r in clickhouse.rows(f"SELECT id, source, type, data, time FROM {clickhouse.table('events')}")
    }
    assert sorted(rows) == sorted(f"{run}-{s}" for s in ("bin", "str-ct", "str", "b64"))
    for event_id in (f"{run}-bin", f"{run}-str-ct", f"{run}-str"):
        assert rows[event_id][:3] == ("sdk-svc", "tokens", '{"model":"gpt-4","tokens":10}')
        assert rows[event_id][3].replace(tzinfo=UTC) == NOW
    assert rows[f"{run}-b64"][2] == '{"model":"m","tokens":7}'
    letters = await read_all(kafka_bootstrap_servers, kafka.dead_letter_topic, 2, 1)
    reason = dict(letters[0].headers)[REASON_HEADER].decode()  # type: ignore[attr-defined]
    assert "send the usage as JSON data" in reason


async def test_the_npm_sdks_kafka_modes_are_stored_exactly(
    kafka_bootstrap_servers: str, clickhouse: ClickHouse, clickhouse_settings: ClickHouseSettings
) -> None:
    from tests.support.npm_sdk import npm_sdk_messages

    produced = [m for m in npm_sdk_messages() if m["kind"] == "kafka"]
    assert {m["mode"] for m in produced} == {"structured", "binary"}
    kafka = kafka_settings(kafka_bootstrap_servers, 2)
    await make_topics(kafka)
    messages = []
    for m in produced:
        event_id = json.loads(m["body"])["id"] if m["mode"] == "structured" else m["headers"]["ce_id"]
        headers = [(k, str(v).encode()) for k, v in m["headers"].items()]
        messages.append((f"default\x00npm-sdk\x00{event_id}".encode(), m["body"].encode(), headers))
    ends = await produce(kafka_bootstrap_servers, kafka.events_topic, messages)
    sink = sink_settings()
    async with running_worker(clickhouse_settings, kafka, sink):
        await wait_until_committed(kafka_bootstrap_servers, sink.consumer_group, kafka.events_topic, ends, within=60)
    rows = dict(clickhouse.rows(f"SELECT id, data FROM {clickhouse.table('events')} WHERE source = 'npm-sdk'"))
    assert rows == {"npm-kafka-structured": '{"tokens":13}', "npm-kafka-binary": '{"tokens":14}'}
