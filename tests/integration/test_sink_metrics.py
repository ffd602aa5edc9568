"""The sink worker's Prometheus metrics on a real broker (tansu) and engine (chdb): scraped over HTTP, the
counters say what the worker did and the lag falls to zero once it has caught up."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.settings import ClickHouseSettings
from ingest.settings import SinkSettings
from ingest.sink.worker import run_worker
from tests.support.services import free_port
from tests.support.sink_kafka import kafka_settings, make_topics, produce
from tests.support.sink_stream import build_stream

pytestmark = pytest.mark.integration


def scrape(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            key = sample.name + ("{" + labels + "}" if labels else "")
            out[key] = sample.value
    return out


async def test_metrics_count_what_the_worker_did(
    kafka_bootstrap_servers: str, clickhouse_settings: ClickHouseSettings
) -> None:
    kafka = kafka_settings(kafka_bootstrap_servers, partitions=2)
    await make_topics(kafka)
    stream = build_stream(400, duplicate_rate=0.1, malformed_rate=0.05, conflict_rate=0.02)
    await produce(kafka_bootstrap_servers, kafka.events_topic, stream.messages)
    port = free_port()
    sink = SinkSettings(
        consumer_group=f"sink-{uuid.uuid4().hex[:8]}",
        batch_timeout_ms=100,
        session_timeout_ms=2000,
        metrics_port=port,
    )
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(clickhouse_settings, kafka, sink, stop=stop))
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            try:
                m = await asyncio.to_thread(scrape, port)
            except httpx.TransportError:
                m = {}
            seen = sum(
                m.get(f"metergate_sink_{name}_total", 0)
                for name in ("events_stored", "duplicates", "dead_letters", "conflicts")
            )
            if seen >= len(stream.messages) or worker.done():
                break
            assert asyncio.get_running_loop().time() < deadline, m
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        counters = await asyncio.wait_for(worker, 30)
    assert m["metergate_sink_events_stored_total"] == counters.stored == len(stream.expected)
    assert m["metergate_sink_dead_letters_total"] == counters.malformed == stream.malformed > 0
    assert m["metergate_sink_duplicates_total"] == counters.duplicates == stream.duplicates
    assert m["metergate_sink_conflicts_total"] == counters.conflicts == stream.conflicts
    assert m["metergate_sink_batches_total"] >= 1
    assert m["metergate_sink_batch_events_count"] == m["metergate_sink_batches_total"]
    assert m["metergate_sink_write_seconds_count"] == m["metergate_sink_batches_total"]
    assert {m.get("metergate_sink_consumer_lag{partition=0}"), m.get("metergate_sink_consumer_lag{partition=1}")} == {0}
