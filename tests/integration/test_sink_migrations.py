"""`metergate migrate`'s ingest steps are idempotent and create what the sink needs."""

from __future__ import annotations

import pytest

from common.clickhouse import ClickHouse
from ingest.sink.migrations import create_topics, migrate_clickhouse
from tests.support.sink_kafka import kafka_settings

pytestmark = pytest.mark.integration


def test_clickhouse_tables_are_created_once(clickhouse: ClickHouse) -> None:
    migrate_clickhouse(clickhouse)
    migrate_clickhouse(clickhouse)
    tables = {
        str(r[0])
        for r in clickhouse.rows(
            "SELECT name FROM system.tables WHERE database = {d:String}", {"d": clickhouse.database}
        )
    }
    assert {"events", "sink_ledger", "dead_letters"} <= tables
    window = clickhouse.rows(
        "SELECT value FROM system.merge_tree_settings WHERE name = 'non_replicated_deduplication_window'"
    )
    assert window  # the setting exists on this engine; the events table sets it (schema.py)
    ddl = str(clickhouse.rows(f"SHOW CREATE TABLE {clickhouse.table('events')}")[0][0])
    assert "non_replicated_deduplication_window = 10000" in ddl


async def test_topics_are_created_once(kafka_bootstrap_servers: str) -> None:
    kafka = kafka_settings(kafka_bootstrap_servers, partitions=3)
    wanted = [kafka.events_topic, kafka.dead_letter_topic, kafka.notifications_topic]
    assert sorted(await create_topics(kafka)) == sorted(wanted)
    assert await create_topics(kafka) == []
