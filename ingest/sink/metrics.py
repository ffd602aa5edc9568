"""The sink worker's figures for operators, as Prometheus metrics on an HTTP port of its own.

`METERGATE_SINK__METRICS_PORT` (0: off) serves `/metrics` from the worker's own registry:

| metric | type | what |
|---|---|---|
| `metergate_sink_batches_total` | counter | batches written and committed |
| `metergate_sink_events_stored_total` | counter | events stored (new) |
| `metergate_sink_duplicates_total` | counter | copies dropped by the dedupe (same key, same payload) |
| `metergate_sink_conflicts_total` | counter | same key, different payload (dead-lettered) |
| `metergate_sink_dead_letters_total` | counter | malformed messages dead-lettered |
| `metergate_sink_write_failures_total` | counter | failed write attempts (each retried unchanged) |
| `metergate_sink_lost_to_retention_total` | counter | messages the broker deleted before they were written |
| `metergate_sink_batch_events` | histogram | messages per batch |
| `metergate_sink_write_seconds` | histogram | from a batch's first write attempt to its commit |
| `metergate_sink_consumer_lag` | gauge, per partition | the partition's high watermark minus the committed offset |

Counters are read from the worker's own totals at scrape time (one source of truth, nothing counted twice).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ingest.sink.processor import SinkCounters

BATCH_BUCKETS = (1, 10, 100, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000)
WRITE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class SinkMetrics(Collector):
    def __init__(self, counters: Callable[[], SinkCounters], lag: Callable[[], Mapping[int, int]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._counters = counters
        self._lag = lag
        self.batch_events = Histogram(
            "metergate_sink_batch_events", "messages per batch", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.write_seconds = Histogram(
            "metergate_sink_write_seconds",
            "from a batch's first write attempt to its commit",
            buckets=WRITE_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(self)

    def collect(self) -> Iterator[Metric]:
        c = self._counters()
        for name, help_text, value in (
            ("metergate_sink_batches", "batches written and committed", c.batches),
            ("metergate_sink_events_stored", "events stored (new)", c.stored),
            ("metergate_sink_duplicates", "copies dropped by the dedupe", c.duplicates),
            ("metergate_sink_conflicts", "same key, different payload (dead-lettered)", c.conflicts),
            ("metergate_sink_dead_letters", "malformed messages dead-lettered", c.malformed),
            ("metergate_sink_write_failures", "failed write attempts (retried unchanged)", c.write_failures),
            ("metergate_sink_lost_to_retention", "messages deleted by retention before written", c.lost_to_retention),
        ):
            yield CounterMetricFamily(name, help_text, value=value)
        lag = GaugeMetricFamily(
            "metergate_sink_consumer_lag", "high watermark minus committed offset", labels=["partition"]
        )
        for partition, value in sorted(self._lag().items()):
            lag.add_metric([str(partition)], value)
        yield lag

    def serve(self, port: int, host: str = "0.0.0.0") -> None:  # noqa: S104 - a container's metrics port
        start_http_server(port, addr=host, registry=self.registry)
