"""Two API processes creating the same meter at once (one ClickHouse, one PostgreSQL): the state database's
advisory lock makes them take turns, so exactly one creates it and the other gets 409, every round."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from aggregator import sql
from aggregator.meter import parse_meter
from aggregator.repository import ClickHouseMeterRepository
from aggregator.roller import LOCK_KEY, server_now
from aggregator.service import MeterExists, MeterService
from common.clickhouse import ClickHouse
from entitlements.db.migrate import upgrade_database
from entitlements.db.session import Database
from tests.support.meter_events import insert
from tests.support.services import fresh_postgres_database

pytestmark = pytest.mark.integration


@pytest.fixture
def database() -> Iterator[Database]:
    with fresh_postgres_database("mg_catalog") as url:
        upgrade_database(url)
        db = Database(url)
        yield db
        db.dispose()


async def test_two_replicas_create_one_slug_once(clickhouse: ClickHouse, database: Database) -> None:
    replicas = [MeterService(ClickHouseMeterRepository(clickhouse), cache_seconds=0) for _ in range(2)]
    await replicas[0].start()
    for replica in replicas:
        await replica.load()
        replica.set_catalog_lock(database)
    for round_ in range(4):
        body = {"slug": f"calls_{round_}", "aggregation": "COUNT", "eventType": f"call_{round_}"}
        results = await asyncio.gather(*(r.create("ns", body) for r in replicas), return_exceptions=True)
        created = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, MeterExists)]
        assert (len(created), len(refused)) == (1, 1), results
        live = [m for m in await replicas[1].meters("ns") if m.slug == body["slug"]]
        assert len(live) == 1


async def test_the_lock_is_held_across_processes(database: Database) -> None:
    """A second holder of the same key waits until the first lets go (it is a real PostgreSQL lock)."""
    order: list[str] = []

    async def hold(name: str, seconds: float) -> None:
        async with database.hold("metergate:meters:ns"):
            order.append(f"{name} in")
            await asyncio.sleep(seconds)
            order.append(f"{name} out")

    first = asyncio.create_task(hold("a", 0.5))
    await asyncio.sleep(0.1)
    await hold("b", 0)
    await first
    assert order == ["a in", "a out", "b in", "b out"]


def test_rollers_of_two_replicas_take_turns(clickhouse: ClickHouse, database: Database) -> None:
    """Each roll holds the shared lock: a roll waits while another replica holds it, and two replicas
    rolling at once while events stream count every event once."""
    repos = [ClickHouseMeterRepository(clickhouse) for _ in range(2)]
    repos[0].migrate()
    meter = parse_meter(
        {"slug": "n", "aggregation": "SUM", "eventType": "n", "valueProperty": "$.n"}, meter_id="turns", namespace="ns"
    )
    repos[0].create(meter)
    for repo in repos:
        repo.roller.share_lock(database.hold_sync)
    order: list[str] = []

    def other_replica() -> None:
        with database.hold_sync(LOCK_KEY):
            order.append("held")
            time.sleep(0.5)
            order.append("released")

    holder = threading.Thread(target=other_replica)
    holder.start()
    while not order:
        time.sleep(0.01)
    repos[1].roller.roll_once()
    order.append("rolled")
    holder.join()
    assert order == ["held", "released", "rolled"]

    stop = threading.Event()

    def roll(repo: ClickHouseMeterRepository) -> None:
        while not stop.is_set():
            repo.roller.roll_once()

    rollers = [threading.Thread(target=roll, args=(repo,)) for repo in repos]
    for t in rollers:
        t.start()
    t0 = datetime(2025, 6, 1, tzinfo=UTC)
    try:
        for b in range(15):
            events = [
                {"id": f"{b}-{i}", "time": t0 + timedelta(minutes=i), "subject": "s", "type": "n", "data": {"n": i}}
                for i in range(30)
            ]
            insert(clickhouse, "ns", events, f"turns-{b}")
            time.sleep(0.05)
    finally:
        stop.set()
        for t in rollers:
            t.join(60)
    repos[0].roller.catch_up(server_now(clickhouse))
    q = sql.Query(meter=meter, namespace="ns", start=t0, end=t0 + timedelta(days=1))
    text, params = sql.build_query(clickhouse.database, q)  # the rollups alone: everything is rolled up
    assert clickhouse.rows(text, parameters=params)[0][-1] == Decimal(15 * sum(range(30)))
