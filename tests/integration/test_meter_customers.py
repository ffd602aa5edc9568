"""Meter queries by customer (OpenMeter's `filterCustomerId` and `groupBy=customer_id`) on the real engine (chdb)
with the real customer service (SQLite): exact for every aggregation, because a customer's subjects are merged
in the engine, not summed after."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response

from aggregator.http import router
from aggregator.repository import ClickHouseMeterRepository
from aggregator.service import MeterService
from aggregator.usage import ClickHouseUsageReader
from common.clickhouse import ClickHouse
from common.clock import FrozenClock
from common.errors import MetergateError
from common.http import problem_for
from entitlements.db.migrate import upgrade_database
from entitlements.service import build_entitlements
from entitlements.service.customers import CustomerInput
from tests.support.meter_events import insert

pytestmark = pytest.mark.integration

T0 = datetime(2024, 5, 1, tzinfo=UTC)


@pytest.fixture
async def env(clickhouse: ClickHouse, tmp_path: Path) -> AsyncIterator[SimpleNamespace]:
    service = MeterService(ClickHouseMeterRepository(clickhouse), clock=FrozenClock(T0 + timedelta(days=3)))
    await service.start()
    url = f"sqlite:///{tmp_path / 'state.db'}"
    upgrade_database(url)
    ents = build_entitlements(url, meters=service, usage=ClickHouseUsageReader(service), clock=service.clock)
    service.set_customers(ents.customers)
    await ents.customers.create("ns", CustomerInput(name="ACME", key="acme", subject_keys=("a1", "a2")))
    await ents.customers.create("ns", CustomerInput(name="Globex", key="globex", subject_keys=("g1",)))
    await ents.customers.create("ns", CustomerInput(name="Empty", key="empty"))
    app = FastAPI()
    app.state.services = SimpleNamespace(meters=service)
    app.include_router(router)

    @app.middleware("http")
    async def namespace(request: Request, call_next: Any) -> Response:
        request.state.namespace = "ns"
        response: Response = await call_next(request)
        return response

    async def on_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, MetergateError)
        return problem_for(exc)

    app.add_exception_handler(MetergateError, on_error)
    for meter in (
        {"slug": "tokens", "aggregation": "SUM", "eventType": "t", "valueProperty": "$.n"},
        {"slug": "users", "aggregation": "UNIQUE_COUNT", "eventType": "t", "valueProperty": "$.user"},
        {"slug": "peak", "aggregation": "MAX", "eventType": "t", "valueProperty": "$.n"},
    ):
        await service.create("ns", meter)
    events = [
        ("1", "a1", 10, "u1"),
        ("2", "a2", 5, "u1"),  # the same user on the customer's other subject: one unique user
        ("3", "a2", 7, "u2"),
        ("4", "g1", 100, "u1"),
        ("5", "stranger", 1000, "u9"),
    ]
    insert(
        clickhouse,
        "ns",
        [
            {"id": i, "time": T0 + timedelta(hours=int(i)), "subject": s, "type": "t", "data": {"n": n, "user": u}}
            for i, s, n, u in events
        ],
        "customers",
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        yield SimpleNamespace(client=client, ents=ents)
    ents.close()


async def query(env: SimpleNamespace, slug: str, status: int = 200, **params: Any) -> Any:
    r = await env.client.get(
        f"/api/v1/meters/{slug}/query", params={"from": "2024-05-01T00:00:00Z", "to": "2024-05-02T00:00:00Z", **params}
    )
    assert r.status_code == status, r.text
    return r.json()


async def test_one_customer_is_the_merge_of_its_subjects(env: SimpleNamespace) -> None:
    assert [d["value"] for d in (await query(env, "tokens", filterCustomerId="acme"))["data"]] == [22]
    assert [d["value"] for d in (await query(env, "users", filterCustomerId="acme"))["data"]] == [2]  # u1, u2
    assert [d["value"] for d in (await query(env, "peak", filterCustomerId="acme"))["data"]] == [10]
    # With a subject filter too: those subjects of the customer.
    assert [d["value"] for d in (await query(env, "tokens", filterCustomerId="acme", subject="a2"))["data"]] == [12]
    assert (await query(env, "tokens", filterCustomerId="empty"))["data"] == []  # no subjects, no usage


async def test_group_by_customer_id(env: SimpleNamespace) -> None:
    acme = (await env.ents.customers.get("ns", "acme")).id
    globex = (await env.ents.customers.get("ns", "globex")).id
    body = await query(env, "users", filterCustomerId=[acme, globex], groupBy="customer_id")
    assert sorted((d["customerId"], d["value"], d["subject"]) for d in body["data"]) == sorted(
        [(acme, 2, None), (globex, 1, None)]
    )
    hourly = await query(env, "tokens", filterCustomerId=[acme, globex], groupBy="customer_id", windowSize="HOUR")
    assert sum(d["value"] for d in hourly["data"] if d["customerId"] == acme) == 22
    by_subject = await query(env, "tokens", filterCustomerId=["acme"], groupBy=["customer_id", "subject"])
    assert sorted((d["subject"], d["value"]) for d in by_subject["data"]) == [("a1", 10), ("a2", 12)]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"groupBy": "customer_id"}, "groupBy"),  # OpenMeter: a customer filter is required with it
        ({"filterCustomerId": ["acme", "globex"]}, "filterCustomerId"),  # ambiguous without the group-by
        ({"filterCustomerId": "nobody"}, "filterCustomerId"),
        ({"filterCustomerId": [f"c{i}" for i in range(101)], "groupBy": "customer_id"}, "filterCustomerId"),
    ],
)
async def test_bad_customer_queries_are_400(env: SimpleNamespace, params: dict[str, Any], field: str) -> None:
    assert (await query(env, "tokens", 400, **params))["field"] == field
