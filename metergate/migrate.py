"""`metergate migrate`: every schema Metergate needs, created idempotently, in one place.

Order: ClickHouse events table (and the sink's own tables), Kafka topics (when a broker is configured),
meter rollups (aggregator), entitlement database schema (Alembic). Each step is a named function
below; the aggregator and entitlements fill in their hook. `metergate dev` runs the same steps at start.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from common.clickhouse import ClickHouse, connect_clickhouse
from common.settings import DatabaseSettings, KafkaSettings
from ingest.sink.migrations import create_topics, migrate_clickhouse
from metergate.settings import MigrateSettings

log = structlog.get_logger(__name__)


def migrate_events_tables(ch: ClickHouse) -> None:
    """The events table (a public interface, see ingest/README.md) and the sink's bookkeeping tables."""
    migrate_clickhouse(ch)
    log.info("migrated_events_tables", database=ch.database)


async def create_kafka_topics(kafka: KafkaSettings) -> None:
    """The events and dead-letter topics, when a broker is configured; existing topics are left alone."""
    if kafka.bootstrap_servers is None:
        return
    created = await create_topics(kafka)
    log.info("migrated_kafka_topics", created=created, events_topic=kafka.events_topic)


def migrate_meter_rollups(ch: ClickHouse, meters_file: Path | None) -> None:
    """Hook (aggregator): create, backfill and drop per-meter rollups to match the meters."""
    from aggregator.config import load_config
    from aggregator.repository import ClickHouseMeterRepository

    repository = ClickHouseMeterRepository(ch)
    repository.migrate()
    repository.reconcile(load_config(meters_file))
    log.info("migrated_meter_rollups", meters_file=str(meters_file) if meters_file else None)


def migrate_entitlements_database(database: DatabaseSettings) -> None:
    """Hook (entitlements): run the Alembic migrations on the state database (SQLite folders are created)."""
    from entitlements.db.migrate import upgrade_database

    upgrade_database(database.url)


async def run_migrations(settings: MigrateSettings, clickhouse: ClickHouse | None = None) -> None:
    """Apply every step; safe to run again. Pass `clickhouse` to reuse an open embedded engine."""
    ch = clickhouse if clickhouse is not None else await asyncio.to_thread(connect_clickhouse, settings.clickhouse)
    try:
        await asyncio.to_thread(migrate_events_tables, ch)
        await create_kafka_topics(settings.kafka)
        await asyncio.to_thread(migrate_meter_rollups, ch, settings.meters_file)
        await asyncio.to_thread(migrate_entitlements_database, settings.database)
    finally:
        if clickhouse is None and not ch.embedded:
            ch.close()
