"""The sink: Kafka (or the embedded in-process log) -> ClickHouse, exactly once in effect.

Public entry points: `run_worker` (ingest.sink.worker), `EmbeddedLog` (ingest.sink.embedded),
`migrate_clickhouse` and `create_topics` (ingest.sink.migrations). See ingest/README.md.
"""
