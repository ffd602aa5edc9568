"""The provisioned "Metergate sink workers" dashboard reads metrics the worker really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import generate_latest

from ingest.sink.metrics import SinkMetrics
from ingest.sink.processor import SinkCounters

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy/grafana/dashboards/metergate-sink.json"


def exported_names() -> set[str]:
    metrics = SinkMetrics(SinkCounters, lambda: {0: 5, 1: 0})
    metrics.batch_events.observe(100)
    metrics.write_seconds.observe(0.02)
    text = generate_latest(metrics.registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_every_panel_reads_exported_metrics() -> None:
    names = exported_names()
    dashboard = json.loads(DASHBOARD.read_text())
    used: set[str] = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "metergate-prometheus", panel["title"]
        for target in panel["targets"]:
            used.update(re.findall(r"\bmetergate_sink_\w+", target["expr"]))
    assert used, "the dashboard reads the sink's metrics"
    assert used <= names, sorted(used - names)
    # What operators need to see: throughput, dedupe, dead letters, conflicts, lag, latency, batch sizes.
    for needed in (
        "metergate_sink_events_stored_total",
        "metergate_sink_duplicates_total",
        "metergate_sink_dead_letters_total",
        "metergate_sink_conflicts_total",
        "metergate_sink_consumer_lag",
        "metergate_sink_write_seconds_bucket",
        "metergate_sink_batch_events_bucket",
    ):
        assert needed in used, needed


def test_the_prometheus_data_source_is_provisioned_with_that_uid() -> None:
    import yaml

    path = DASHBOARD.parents[1] / "provisioning/datasources/clickhouse.yaml"
    sources = yaml.safe_load(path.read_text())["datasources"]
    prometheus = next(s for s in sources if s["type"] == "prometheus")
    assert prometheus["uid"] == "metergate-prometheus"
    assert prometheus["url"] == "http://prometheus:9090"
