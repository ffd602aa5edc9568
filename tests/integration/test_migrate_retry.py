"""`metergate migrate` against servers that are still starting (compose brings them up together): transient
failures are retried for a bounded time, then the step fails naming itself. Real broker (tansu) started late."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from common.clickhouse import ClickHouse
from common.errors import Unavailable
from common.settings import DatabaseSettings, KafkaSettings
from metergate.migrate import run_migrations
from metergate.settings import MigrateSettings
from tests.support.services import free_port, tansu_broker

pytestmark = pytest.mark.integration


def settings(tmp_path: Path, port: int, retry_seconds: float) -> MigrateSettings:
    return MigrateSettings(
        kafka=KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}"),
        database=DatabaseSettings(url=f"sqlite:///{tmp_path / 'state.db'}"),
        retry_seconds=retry_seconds,
    )


async def test_a_broker_that_starts_late_is_waited_for(clickhouse: ClickHouse, tmp_path: Path) -> None:
    port = free_port()
    stop = threading.Event()

    def late_broker() -> None:
        time.sleep(2)
        with tansu_broker(port):
            stop.wait(60)

    broker = threading.Thread(target=late_broker, daemon=True)
    broker.start()
    try:
        await run_migrations(settings(tmp_path, port, retry_seconds=60), clickhouse)
        admin = AIOKafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}")
        await admin.start()
        try:
            assert {"om_events", "om_events_dlq", "om_notifications"} <= set(await admin.list_topics())
        finally:
            await admin.close()
        assert (tmp_path / "state.db").exists()
    finally:
        stop.set()
        await asyncio.to_thread(broker.join, 30)


async def test_a_broker_that_never_comes_fails_the_step_in_bounded_time(clickhouse: ClickHouse, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(Unavailable, match="Kafka topics still failing after"):
        await run_migrations(settings(tmp_path, free_port(), retry_seconds=3), clickhouse)
    assert time.monotonic() - started < 30
