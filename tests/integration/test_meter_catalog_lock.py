"""Two API processes creating the same meter at once (one ClickHouse, one PostgreSQL): the state database's
advisory lock makes them take turns, so exactly one creates it and the other gets 409, every round."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from aggregator.repository import ClickHouseMeterRepository
from aggregator.service import MeterExists, MeterService
from common.clickhouse import ClickHouse
from entitlements.db.migrate import upgrade_database
from entitlements.db.session import Database
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
