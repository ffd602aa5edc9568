"""Customers and the v2 entitlement API, on SQLite and on a real PostgreSQL: a customer's usage is the sum over its
subjects, both API versions see the same entitlements, and a subject belongs to at most one customer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from common.clock import FrozenClock
from entitlements.access_http import router as access_router
from entitlements.cache.store import BalanceCache
from entitlements.customers_http import router as customers_router
from entitlements.db.migrate import upgrade_database
from entitlements.service import Entitlements, build_entitlements
from tests.support.entitlement_fakes import FakeMeters, FakeUsage, entitlements_app
from tests.support.services import fresh_postgres_database

pytestmark = pytest.mark.integration

T0 = datetime(2024, 1, 1, tzinfo=UTC)
NOW = datetime(2024, 1, 10, tzinfo=UTC)
METERED = {
    "type": "metered",
    "featureKey": "gpt",
    "measureUsageFrom": "2024-01-01T00:00:00Z",
    "usagePeriod": {"interval": "MONTH", "anchor": "2024-01-01T00:00:00Z"},
}


class Env:
    def __init__(self, client: httpx.AsyncClient, ents: Entitlements, usage: FakeUsage, clock: FrozenClock) -> None:
        self.client, self.ents, self.usage, self.clock = client, ents, usage, clock

    async def call(self, method: str, path: str, body: object = None, status: int = 200, **params: Any) -> Any:
        content = None if body is None else json.dumps(body)
        r = await self.client.request(method, path, content=content, params=params)
        assert r.status_code == status, r.text
        return r.json() if r.content else None

    async def value(self, path: str) -> dict[str, Any]:
        body: dict[str, Any] = await self.call("GET", path)
        assert body.pop("asOf").endswith("Z")
        return body


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
    else:
        with fresh_postgres_database("mg_customers") as url:
            yield url


@pytest.fixture
async def env(database_url: str) -> AsyncIterator[Env]:
    upgrade_database(database_url)
    usage, meters, clock = FakeUsage(), FakeMeters(), FrozenClock(NOW)
    meters.add("tokens")
    ents = build_entitlements(database_url, meters=meters, usage=usage, clock=clock, cache=BalanceCache())
    app: FastAPI = entitlements_app(ents)
    app.include_router(access_router)
    app.include_router(customers_router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        e = Env(c, ents, usage, clock)
        await e.call("POST", "/api/v1/features", {"key": "gpt", "name": "GPT", "meterSlug": "tokens"}, 201)
        await e.call("POST", "/api/v1/features", {"key": "sso", "name": "SSO"}, 201)
        yield e
    ents.close()


async def test_customer_crud_filters_and_paging(env: Env) -> None:
    acme = await env.call(
        "POST",
        "/api/v1/customers",
        {
            "name": "ACME Inc.",
            "key": "acme",
            "usageAttribution": {"subjectKeys": ["acme-api", "acme-batch"]},
            "primaryEmail": "billing@acme.test",
            "currency": "USD",
            "metadata": {"tier": "gold"},
        },
        201,
    )
    assert acme["usageAttribution"] == {"subjectKeys": ["acme-api", "acme-batch"]}
    assert (acme["key"], acme["currency"], acme["deletedAt"]) == ("acme", "USD", None)
    assert (await env.call("GET", "/api/v1/customers/acme"))["id"] == acme["id"]
    assert (await env.call("GET", f"/api/v1/customers/{acme['id']}"))["key"] == "acme"
    await env.call("POST", "/api/v1/customers", {"name": "Globex", "usageAttribution": {"subjectKeys": ["gx"]}}, 201)
    listed = await env.call("GET", "/api/v1/customers", pageSize=1, orderBy="name")
    assert (listed["totalCount"], listed["pageSize"], [c["name"] for c in listed["items"]]) == (2, 1, ["ACME Inc."])
    assert [c["name"] for c in (await env.call("GET", "/api/v1/customers", subject="gx"))["items"]] == ["Globex"]
    assert [c["key"] for c in (await env.call("GET", "/api/v1/customers", name="acme"))["items"]] == ["acme"]
    found = await env.call("GET", "/api/v1/customers", primaryEmail="billing@acme.test")
    assert found["totalCount"] == 1
    updated = await env.call(
        "PUT", "/api/v1/customers/acme", {"name": "ACME", "key": "acme", "usageAttribution": {"subjectKeys": []}}
    )
    assert (updated["name"], updated["usageAttribution"]["subjectKeys"], updated["currency"]) == ("ACME", [], None)
    await env.call("DELETE", "/api/v1/customers/acme", status=204)
    await env.call("GET", "/api/v1/customers/acme", status=404)
    assert (await env.call("GET", f"/api/v1/customers/{acme['id']}"))["deletedAt"] is not None
    assert (await env.call("GET", "/api/v1/customers"))["totalCount"] == 1
    assert (await env.call("GET", "/api/v1/customers", includeDeleted="true"))["totalCount"] == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "no key, no subjects"}, "key"),
        ({"name": "x", "key": "x", "primaryEmail": "not-an-email"}, "primaryEmail"),
        ({"name": "x", "key": "x", "currency": "dollars"}, "currency"),
        ({"name": "x", "usageAttribution": {"subjectKeys": [""]}}, "usageAttribution.subjectKeys"),
        ({"key": "x"}, "name"),
    ],
)
async def test_bad_customers_are_400_and_leave_nothing(env: Env, body: dict[str, Any], field: str) -> None:
    bad = await env.call("POST", "/api/v1/customers", body, 400)
    assert bad["field"] == field, bad
    assert (await env.call("GET", "/api/v1/customers"))["totalCount"] == 0


async def test_a_subject_belongs_to_one_customer(env: Env) -> None:
    first = await env.call("POST", "/api/v1/customers", {"name": "A", "usageAttribution": {"subjectKeys": ["s1"]}}, 201)
    taken = await env.call("POST", "/api/v1/customers", {"name": "B", "usageAttribution": {"subjectKeys": ["s1"]}}, 409)
    assert first["id"] in taken["detail"]
    assert taken["conflictingEntityId"] == first["id"]
    # A customer key is attributed usage too, so it cannot be another customer's subject.
    assert (await env.call("POST", "/api/v1/customers", {"name": "C", "key": "s1"}, 409))["conflictingEntityId"]
    await env.call("POST", "/api/v1/customers", {"name": "D", "key": "dee"}, 201)
    assert (await env.call("POST", "/api/v1/customers", {"name": "E", "key": "dee"}, 409))["key"] == "dee"
    # Freed by deleting its customer, the subject can move.
    await env.call("DELETE", f"/api/v1/customers/{first['id']}", status=204)
    await env.call("POST", "/api/v1/customers", {"name": "B", "usageAttribution": {"subjectKeys": ["s1"]}}, 201)


async def test_two_customers_claiming_one_subject_at_once(env: Env) -> None:
    """One wins, the other gets 409 naming the winner; nothing of the loser is stored."""
    for round_ in range(5):
        subject = f"contested-{round_}"
        bodies = [
            {"name": f"c{n}", "usageAttribution": {"subjectKeys": [subject, f"own-{round_}-{n}"]}} for n in (1, 2)
        ]
        responses = await asyncio.gather(*(env.client.post("/api/v1/customers", content=json.dumps(b)) for b in bodies))
        codes = sorted(r.status_code for r in responses)
        assert codes == [201, 409], [r.text for r in responses]
        winner = next(r.json() for r in responses if r.status_code == 201)
        loser = next(r.json() for r in responses if r.status_code == 409)
        assert winner["id"] in loser["detail"]
        holders = await env.call("GET", "/api/v1/customers", subject=subject)
        assert [c["id"] for c in holders["items"]] == [winner["id"]]
    assert (await env.call("GET", "/api/v1/customers"))["totalCount"] == 5


async def test_customer_usage_is_the_sum_over_its_subjects(env: Env) -> None:
    await env.call(
        "POST",
        "/api/v1/customers",
        {"name": "ACME", "key": "acme", "usageAttribution": {"subjectKeys": ["a", "b"]}},
        201,
    )
    ent = await env.call("POST", "/api/v2/customers/acme/entitlements", {**METERED, "issue": {"amount": 100}}, 201)
    assert (ent["customerKey"], ent["issue"]["amount"], ent["issueAfterReset"]) == ("acme", 100, 100)
    assert "subjectKey" not in ent
    env.usage.add("tokens", "a", T0 + timedelta(days=1), 30)
    env.usage.add("tokens", "b", T0 + timedelta(days=2), 25)
    env.usage.add("tokens", "someone-else", T0 + timedelta(days=2), 1000)
    expected = {"hasAccess": True, "balance": 45, "usage": 55, "overage": 0, "totalAvailableGrantAmount": 100}
    assert await env.value("/api/v2/customers/acme/entitlements/gpt/value") == expected
    assert await env.value("/api/v1/customers/acme/entitlements/gpt/value") == expected
    access = await env.call("GET", "/api/v1/customers/acme/access")
    assert {k: {f: v for f, v in body.items() if f != "asOf"} for k, body in access["entitlements"].items()} == {
        "gpt": expected
    }
    # The v1 subject routes see the customer's entitlement through either subject.
    assert await env.value("/api/v1/subjects/b/entitlements/gpt/value") == expected
    listed = await env.call("GET", "/api/v1/subjects/a/entitlements")
    assert [(e["id"], e["subjectKey"]) for e in listed] == [(ent["id"], "acme")]
    # A grant through v2 counts at once (the cache was invalidated by the write).
    await env.call(
        "POST",
        "/api/v2/customers/acme/entitlements/gpt/grants",
        {"amount": 50, "effectiveAt": "2024-01-01T00:00:00Z"},
        201,
    )
    assert (await env.value("/api/v1/customers/acme/entitlements/gpt/value"))["balance"] == 95
    grants = await env.call("GET", "/api/v2/customers/acme/entitlements/gpt/grants")
    assert (grants["totalCount"], grants["items"][0]["expiration"], grants["items"][0]["expiresAt"]) == (1, None, None)
    # A late event on either subject is counted by the next computation.
    env.usage.add("tokens", "b", T0 + timedelta(hours=1), 5)
    fresh = await env.client.get("/api/v2/customers/acme/entitlements/gpt/value", headers={"Cache-Control": "no-cache"})
    assert fresh.json()["usage"] == 60
    # Reset and history through v2.
    await env.call(
        "POST", "/api/v2/customers/acme/entitlements/gpt/reset", {"effectiveAt": "2024-01-05T00:00:00Z"}, 204
    )
    history = await env.call(
        "GET", "/api/v2/customers/acme/entitlements/gpt/history", windowSize="DAY", **{"from": "2024-01-01T00:00:00Z"}
    )
    assert sum(w["usage"] for w in history["windowedHistory"]) == 60
    assert (await env.value("/api/v2/customers/acme/entitlements/gpt/value"))["usage"] == 0


async def test_subjects_joining_and_leaving_count_from_the_beginning(env: Env) -> None:
    """A change to a customer's subjects counts over the whole history, and is seen by the very next read."""
    await env.call(
        "POST", "/api/v1/customers", {"name": "ACME", "key": "acme", "usageAttribution": {"subjectKeys": ["a"]}}, 201
    )
    await env.call("POST", "/api/v2/customers/acme/entitlements", {**METERED, "issue": {"amount": 100}}, 201)
    env.usage.add("tokens", "a", T0 + timedelta(days=1), 10)
    env.usage.add("tokens", "b", T0 + timedelta(days=1), 7)
    path = "/api/v1/customers/acme/entitlements/gpt/value"
    assert (await env.value(path))["usage"] == 10  # cached now
    body = {"name": "ACME", "key": "acme", "usageAttribution": {"subjectKeys": ["a", "b"]}}
    await env.call("PUT", "/api/v1/customers/acme", body)
    assert (await env.value(path))["usage"] == 17
    body["usageAttribution"] = {"subjectKeys": ["b"]}
    await env.call("PUT", "/api/v1/customers/acme", body)
    assert (await env.value(path))["usage"] == 7
    # A subject that left no longer stands for the customer on the v1 routes.
    await env.call("GET", "/api/v1/subjects/a/entitlements/gpt/value", status=404)


async def test_a_subject_joining_brings_its_entitlements(env: Env) -> None:
    own = await env.call("POST", "/api/v1/subjects/solo/entitlements", METERED, 201)
    env.usage.add("tokens", "solo", T0 + timedelta(days=1), 4)
    env.usage.add("tokens", "other", T0 + timedelta(days=1), 6)
    cust = await env.call(
        "POST",
        "/api/v1/customers",
        {"name": "S", "key": "s", "usageAttribution": {"subjectKeys": ["solo", "other"]}},
        201,
    )
    got = await env.call("GET", f"/api/v2/customers/{cust['id']}/entitlements/gpt")
    assert (got["id"], got["customerId"]) == (own["id"], cust["id"])
    assert (await env.value("/api/v1/subjects/solo/entitlements/gpt/value"))["usage"] == 10
    # Two subjects each with an entitlement of one feature cannot be merged into one customer.
    await env.call("POST", "/api/v1/subjects/x/entitlements", {"type": "boolean", "featureKey": "sso"}, 201)
    await env.call("POST", "/api/v1/subjects/y/entitlements", {"type": "boolean", "featureKey": "sso"}, 201)
    clash = await env.call(
        "POST", "/api/v1/customers", {"name": "XY", "usageAttribution": {"subjectKeys": ["x", "y"]}}, 409
    )
    assert "sso" in clash["detail"]
    assert (await env.call("GET", "/api/v1/customers", subject="x"))["totalCount"] == 0
    # A customer with active entitlements cannot be deleted (OpenMeter's rule).
    await env.call("DELETE", f"/api/v1/customers/{cust['id']}", status=400)
    await env.call("DELETE", f"/api/v2/customers/{cust['id']}/entitlements/gpt", status=204)
    await env.call("DELETE", f"/api/v1/customers/{cust['id']}", status=204)


async def test_v2_lists_across_customers(env: Env) -> None:
    for key in ("c1", "c2"):
        await env.call("POST", "/api/v1/customers", {"name": key, "key": key}, 201)
        await env.call("POST", f"/api/v2/customers/{key}/entitlements", {"type": "boolean", "featureKey": "sso"}, 201)
        await env.call(
            "POST",
            f"/api/v2/customers/{key}/entitlements",
            {**METERED, "grants": [{"amount": 10, "effectiveAt": "2024-01-01T00:00:00Z"}]},
            201,
        )
    await env.call("POST", "/api/v1/subjects/lonely/entitlements", {"type": "boolean", "featureKey": "sso"}, 201)
    everything = await env.call("GET", "/api/v2/entitlements")
    assert everything["totalCount"] == 4  # customers' entitlements only
    only_c1 = await env.call("GET", "/api/v2/entitlements", customerKeys="c1")
    assert {e["customerKey"] for e in only_c1["items"]} == {"c1"}
    metered = await env.call("GET", "/api/v2/entitlements", entitlementType="metered", page=1, pageSize=1)
    assert (metered["totalCount"], len(metered["items"])) == (2, 1)
    by_id = await env.call("GET", f"/api/v2/entitlements/{metered['items'][0]['id']}")
    assert by_id["type"] == "metered"
    grants = await env.call("GET", "/api/v2/grants", customer="c2")
    assert grants["totalCount"] == 1
    assert (await env.call("GET", "/api/v2/grants"))["totalCount"] == 2
    bad = await env.call(
        "POST",
        "/api/v2/customers/c1/entitlements",
        {"type": "boolean", "featureKey": "gpt", "grants": [{"amount": 1, "effectiveAt": "2024-01-01T00:00:00Z"}]},
        400,
    )
    assert bad["field"] == "grants"
    await env.call("GET", "/api/v2/customers/nobody/entitlements", status=404)
