"""`metergate migrate`: every schema Metergate needs, created idempotently, in one place.

Order: ClickHouse events table (and the sink's own tables), Kafka topics (when a broker is configured),
meter rollups (aggregator), entitlement database schema (Alembic). Each step is a named function
below; the aggregator and entitlements fill in their hook. `metergate dev` runs the same steps at start.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import structlog

from common.clickhouse import ClickHouse, connect_clickhouse
from common.errors import Unavailable
from common.settings import DatabaseSettings, KafkaSettings
from ingest.sink.migrations import create_topics, ingest_schema_sql, migrate_clickhouse
from metergate.settings import MigrateSettings

log = structlog.get_logger(__name__)

T = TypeVar("T")


def _transient(exc: BaseException) -> bool:
    """A server not (yet) reachable: worth another try. Anything else (bad SQL, a refused topic) fails at once."""
    if isinstance(exc, Unavailable | OSError):
        return True
    try:
        from sqlalchemy.exc import OperationalError
    except ImportError:  # pragma: no cover - sqlalchemy is a dependency
        return False
    return isinstance(exc, OperationalError)


async def retrying(step: str, attempt: Callable[[], Awaitable[T]], retry_seconds: float) -> T:
    """Run one migration step, retrying transient failures (a server still starting) with backoff for at most
    `retry_seconds`; then fail with the last error, naming the step."""
    deadline = time.monotonic() + retry_seconds
    delay, tries = 0.5, 0
    while True:
        tries += 1
        try:
            return await attempt()
        except Exception as exc:
            if not _transient(exc) or time.monotonic() + delay > deadline:
                if tries > 1:
                    raise Unavailable(f"migrate: {step} still failing after {tries} tries: {exc}") from exc
                raise
            log.warning("migrate_step_retry", step=step, attempt=tries, retry_in_s=delay, error=str(exc)[:300])
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


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


def clickhouse_schema_sql(database: str) -> list[str]:
    """Every ClickHouse statement of the schema `migrate` creates, in its order, each once (`migrate
    --print-sql`). Not included, because they depend on what is stored: `inserted_at` materialised on parts
    older than the column, and each meter's build (its route, views and backfill, logged as it runs)."""
    from aggregator.repository import ClickHouseMeterRepository

    out: list[str] = []
    for stmt in [*ingest_schema_sql(database), *ClickHouseMeterRepository.schema_sql(database)]:
        if stmt not in out:
            out.append(stmt)
    return out


def migrate_meter_rollups(ch: ClickHouse, meters_file: Path | None, database: DatabaseSettings | None = None) -> None:
    """Hook (aggregator): create, backfill and drop per-meter rollups to match the meters. A meter's build
    rolls up to its cutover: with a PostgreSQL state database, under the advisory lock the API processes'
    rollers hold (never two rolls at once)."""
    from aggregator.config import load_config
    from aggregator.repository import ClickHouseMeterRepository
    from entitlements.db.session import Database

    repository = ClickHouseMeterRepository(ch)
    shared = Database(database.url) if database is not None and database.url.startswith("postgresql") else None
    try:
        if shared is not None:
            repository.roller.share_lock(shared.hold_sync)
        repository.migrate()
        repository.reconcile(load_config(meters_file))
    finally:
        if shared is not None:
            shared.dispose()
    log.info("migrated_meter_rollups", meters_file=str(meters_file) if meters_file else None)


def migrate_entitlements_database(database: DatabaseSettings) -> None:
    """Hook (entitlements): run the Alembic migrations on the state database (SQLite folders are created)."""
    from entitlements.db.migrate import upgrade_database

    upgrade_database(database.url)


async def run_migrations(settings: MigrateSettings, clickhouse: ClickHouse | None = None) -> None:
    """Apply every step; safe to run again. Pass `clickhouse` to reuse an open embedded engine.

    A server that is not reachable yet (compose starting, a restart) is retried for `settings.retry_seconds`."""
    wait = settings.retry_seconds
    if clickhouse is not None:
        ch = clickhouse
    else:
        ch = await retrying(
            "connect to ClickHouse", lambda: asyncio.to_thread(connect_clickhouse, settings.clickhouse), wait
        )
    try:
        await retrying("events tables", lambda: asyncio.to_thread(migrate_events_tables, ch), wait)
        await retrying("Kafka topics", lambda: create_kafka_topics(settings.kafka), wait)
        await retrying(
            "meter rollups",
            lambda: asyncio.to_thread(migrate_meter_rollups, ch, settings.meters_file, settings.database),
            wait,
        )
        await retrying(
            "state database", lambda: asyncio.to_thread(migrate_entitlements_database, settings.database), wait
        )
    finally:
        if clickhouse is None and not ch.embedded:
            ch.close()
