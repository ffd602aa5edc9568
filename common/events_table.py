"""The ClickHouse events table: a public, documented interface (see ingest/README.md).

Pure DDL builders: values in, SQL text out.
"""

from __future__ import annotations

EVENTS_TABLE = "events"

# Set by ClickHouse when an insert starts (DEFAULT now64(3), added by the aggregator's migration): the meter
# roller rolls up one range of it at a time, and meters cut their backfill from the roller's count on it.
INSERTED_AT = "inserted_at"

# Insert dedupe (ClickHouse drops a retried block with the same insert_deduplication_token) only works
# when the table keeps a window of recent block ids; 0, the default, disables it entirely.
DEDUPLICATION_WINDOW = 10_000

EVENT_COLUMNS = (
    "namespace",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "data",
    "ingested_at",
    "stored_at",
    "ingest_topic",
    "ingest_partition",
    "ingest_offset",
)


def events_table_ddl(database: str) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS `{database}`.`{EVENTS_TABLE}`
(
    namespace LowCardinality(String) COMMENT 'tenant the event belongs to',
    id String COMMENT 'CloudEvents id; (namespace, source, id) is unique',
    source String COMMENT 'CloudEvents source',
    type LowCardinality(String) COMMENT 'CloudEvents type, matched by meters eventType',
    subject String COMMENT 'the customer or entity the usage belongs to',
    time DateTime64(3, 'UTC') COMMENT 'event time, UTC, millisecond precision',
    data String COMMENT 'CloudEvents data as canonical JSON text (sorted keys), or null',
    ingested_at DateTime64(3, 'UTC') COMMENT 'when Metergate accepted the event (HTTP receipt or Kafka timestamp)',
    stored_at DateTime64(3, 'UTC') COMMENT 'when the sink wrote the batch holding the event',
    ingest_topic LowCardinality(String) COMMENT 'source log: the Kafka topic, or "embedded" for the in-process log',
    ingest_partition Int32 COMMENT 'source log partition (Kafka partition; 0 for the embedded log)',
    ingest_offset Int64 COMMENT 'source log offset',
    INDEX idx_event_id id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (namespace, type, subject, time)
SETTINGS non_replicated_deduplication_window = {DEDUPLICATION_WINDOW}
"""
