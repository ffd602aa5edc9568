"""Meter creation answers at once; the backfill runs behind it, exact at every moment, resumable, and
stoppable by a delete (real ClickHouse engine through chdb)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from aggregator import routing, sql
from aggregator.meter import parse_meter
from aggregator.repository import BACKFILLING, READY
from aggregator.service import MeterService
from common.clickhouse import ClickHouse
from tests.support.meter_events import insert
from tests.support.meters_app import TOKENS, meters_app

pytestmark = pytest.mark.integration

# The fixture app stores 10 + 2.5 + 4 tokens (and one NaN) in March 2024; these add January and February.
HISTORY = [
    {"id": f"h{i}", "time": datetime(2024, 1 + i % 2, 3 + i, 12, tzinfo=UTC), "subject": "carol", "type": "prompt",
     "data": {"tokens": i + 1, "model": "a"}}
    for i in range(6)
]  # fmt: skip
FIXTURE_TOTAL = Decimal("16.5")
HISTORY_TOTAL = Decimal(1 + 2 + 3 + 4 + 5 + 6)


class Gate:
    """A CatalogLock whose backfill keys wait until the test opens it: holds a backfill while we look."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        if key.startswith("metergate:backfill:"):
            await self.opened.wait()
        yield

    @contextlib.contextmanager
    def hold_sync(self, key: str) -> Iterator[None]:  # the roller's lock: never held here
        yield


@pytest.fixture
async def env(clickhouse: ClickHouse) -> AsyncIterator[SimpleNamespace]:
    async with meters_app(clickhouse) as e:
        insert(clickhouse, "ns1", HISTORY, "history")
        e.gate = Gate()
        e.service.set_catalog_lock(e.gate)
        yield e


async def total(env: SimpleNamespace, slug: str = "tokens") -> Decimal:
    r = await env.client.get(f"/api/v1/meters/{slug}/query")
    assert r.status_code == 200, r.text
    return sum((Decimal(str(d["value"])) for d in r.json()["data"]), Decimal(0))


def view_total(ch: ClickHouse, meter_id: str, suffix: str = "_hour") -> Decimal:
    """What a dashboard reads: the meter's documented per-meter view."""
    view = f"`{ch.database}`.meter_rollup_{meter_id}{suffix}"
    rows = ch.rows(f"SELECT sumMerge(value) FROM {view} WHERE namespace = 'ns1'")
    return Decimal(rows[0][0]) if rows and rows[0][0] is not None else Decimal(0)


def view_source(ch: ClickHouse, meter_id: str) -> str:
    rows = ch.rows(
        "SELECT create_table_query FROM system.tables WHERE database = {db:String} AND name = {n:String}",
        parameters={"db": ch.database, "n": f"meter_rollup_{meter_id}_hour"},
    )
    return str(rows[0][0])


async def test_create_answers_at_once_and_is_exact_while_backfilling(env: SimpleNamespace) -> None:
    c = env.client
    r = await c.post("/api/v1/meters", json=TOKENS)
    assert r.status_code == 201, r.text
    meter = r.json()
    assert (meter["status"], meter["backfilledThrough"]) == ("BACKFILLING", None)
    expected = FIXTURE_TOTAL + HISTORY_TOTAL
    # Held: nothing is rolled up yet, and every reader is exact already.
    assert await total(env) == expected
    assert view_total(env.ch, meter["id"]) == expected
    assert "meter_rollups" not in view_source(env.ch, meter["id"])
    listed = {m["slug"]: m for m in (await c.get("/api/v1/meters")).json()}
    assert listed["tokens"]["status"] == "BACKFILLING"
    assert listed["calls"]["status"] == "READY"
    # New usage while the backfill waits: the router counts it, the raw answer shows it.
    late = [{"id": "n1", "time": datetime(2024, 2, 20, tzinfo=UTC), "subject": "dave", "type": "prompt",
             "data": {"tokens": 100, "model": "b"}}]  # fmt: skip
    insert(env.ch, "ns1", late, "new-usage")
    assert await total(env) == expected + 100
    # Group-by keys cannot change before the meter is READY; names can.
    r = await c.put("/api/v1/meters/tokens", json={"groupBy": {"model": "$.model", "size": "$.size"}})
    assert r.status_code == 409, r.text
    assert "still backfilling" in r.json()["detail"]
    r = await c.put("/api/v1/meters/tokens", json={"groupBy": TOKENS["groupBy"], "name": "Tokens"})
    assert (r.status_code, r.json()["status"]) == (200, "BACKFILLING")

    env.gate.opened.set()
    await env.service.wait_backfills()
    done = (await c.get("/api/v1/meters/tokens")).json()
    assert (done["status"], done["name"]) == ("READY", "Tokens")
    assert "backfilledThrough" not in done
    assert "meter_rollups" in view_source(env.ch, meter["id"])
    assert await total(env) == expected + 100  # the event counted by the router is not counted again
    assert view_total(env.ch, meter["id"]) == expected + 100
    assert view_total(env.ch, meter["id"], "") == expected + 100
    r = await c.get("/api/v1/meters/tokens/query", params={"windowSize": "MONTH", "subject": "carol"})
    assert [d["value"] for d in r.json()["data"]] == [1 + 3 + 5, 2 + 4 + 6]


async def test_an_interrupted_backfill_resumes_after_its_last_month_without_double_counting(
    env: SimpleNamespace,
) -> None:
    repo = env.service.repository
    meter = parse_meter({**TOKENS, "slug": "resumed"}, meter_id="resumed1", namespace="ns1", created_at=None)
    cutover = await asyncio.to_thread(repo.begin, meter)

    class Crash(Exception):
        pass

    def crash_after_first_month(month: int, _done: int, _total: int) -> None:
        raise Crash(month)

    with pytest.raises(Crash):
        await asyncio.to_thread(lambda: repo.complete(meter, cutover, progress=crash_after_first_month))
    status = repo.status(meter.id)
    assert status is not None
    assert (status.state, status.backfilled, status.backfilled_through) == (
        BACKFILLING,
        202401,
        datetime(2024, 2, 1, tzinfo=UTC),
    )
    # The crash hit in the middle of February: its minute rows written, its hour rows not.
    env.ch.command(routing.backfill_sql(env.ch.database, meter, cutover, sql.MINUTE, 202402))
    r = await env.client.get("/api/v1/meters/resumed")
    assert (r.json()["status"], r.json()["backfilledThrough"]) == ("BACKFILLING", "2024-02-01T00:00:00.000Z")

    # The next start (a new process) resumes it in the background.
    restarted = MeterService(repo, config_meters=env.service.config_meters, cache_seconds=0)
    try:
        await restarted.load()
        await restarted.wait_backfills()
    finally:
        await restarted.close()
    status = repo.status(meter.id)
    assert status is not None
    assert status.state == READY
    assert status.cutover == cutover  # resumed under its own cutover, not rebuilt
    expected = FIXTURE_TOTAL + HISTORY_TOTAL
    assert view_total(env.ch, meter.id) == expected
    assert view_total(env.ch, meter.id, "") == expected  # February's minute rows are not counted twice
    await env.service.load()
    assert await total(env, "resumed") == expected


async def test_a_meter_deleted_while_backfilling_stays_deleted(env: SimpleNamespace) -> None:
    c = env.client
    meter: dict[str, Any] = (await c.post("/api/v1/meters", json=TOKENS)).json()
    assert (await c.delete("/api/v1/meters/tokens")).status_code == 204
    env.gate.opened.set()
    await env.service.wait_backfills()
    await asyncio.sleep(0)
    assert (await c.get("/api/v1/meters/tokens")).status_code == 404
    assert env.service.repository.status(meter["id"]) is None
    rows = env.ch.rows(
        f"SELECT count() FROM `{env.ch.database}`.meter_rollups WHERE startsWith(rollup_id, {{p:String}})",
        parameters={"p": meter["id"] + "_"},
    )
    assert int(rows[0][0]) == 0
    # The slug is free again and a new meter backfills normally.
    r = await c.post("/api/v1/meters", json=TOKENS)
    assert r.status_code == 201, r.text
    await env.service.wait_backfills()
    assert await total(env) == FIXTURE_TOTAL + HISTORY_TOTAL


async def test_a_failing_backfill_is_retried_and_the_meter_stays_exact(
    env: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aggregator.service as service_module

    monkeypatch.setattr(service_module, "BACKFILL_RETRY_SECONDS", (0.05, 0.1))
    real = routing.meter_view_ddl
    failures = {"left": 2}

    def flaky(*args: Any) -> str:
        if failures["left"]:
            failures["left"] -= 1
            return real(*args).replace("SELECT", "SELEKT", 1)  # ClickHouse refuses it
        return real(*args)

    monkeypatch.setattr(routing, "meter_view_ddl", flaky)
    env.gate.opened.set()
    r = await env.client.post("/api/v1/meters", json=TOKENS)
    assert r.status_code == 201, r.text
    for _ in range(200):
        if (await env.client.get("/api/v1/meters/tokens")).json()["status"] == "READY":
            break
        assert await total(env) == FIXTURE_TOTAL + HISTORY_TOTAL  # exact at every moment meanwhile
        await asyncio.sleep(0.05)
    assert failures["left"] == 0
    await env.service.wait_backfills()
    assert (await env.client.get("/api/v1/meters/tokens")).json()["status"] == "READY"
    assert await total(env) == FIXTURE_TOTAL + HISTORY_TOTAL
    assert view_total(env.ch, r.json()["id"]) == FIXTURE_TOTAL + HISTORY_TOTAL


def test_backfilled_through_is_the_month_after_the_last_complete_one() -> None:
    from aggregator.repository import MeterStatus

    at = datetime(2024, 1, 1, tzinfo=UTC)
    assert MeterStatus(BACKFILLING, at, 0).backfilled_through is None
    assert MeterStatus(BACKFILLING, at, 202411).backfilled_through == datetime(2024, 12, 1, tzinfo=UTC)
    assert MeterStatus(BACKFILLING, at, 202412).backfilled_through == datetime(2025, 1, 1, tzinfo=UTC)
    assert MeterStatus(BACKFILLING, at, 202412).backfilled_through - timedelta(days=31) == datetime(
        2024, 12, 1, tzinfo=UTC
    )
