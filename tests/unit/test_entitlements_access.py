"""The access routes: one subject's every feature, and the bulk query, over the balance cache."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from common.clock import FrozenClock
from entitlements.access_http import router as access_router
from entitlements.cache.store import BalanceCache
from entitlements.db.migrate import upgrade_database
from entitlements.service import Entitlements, build_entitlements
from entitlements.service.customers import CustomerInput
from tests.support.entitlement_fakes import FakeMeters, FakeUsage, entitlements_app

T0 = datetime(2024, 1, 1, tzinfo=UTC)
NOW = datetime(2024, 1, 10, tzinfo=UTC)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Entitlements, FakeUsage]]:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    upgrade_database(url)
    usage = FakeUsage()
    meters = FakeMeters()
    meters.add("tokens")
    ents = build_entitlements(url, meters=meters, usage=usage, clock=FrozenClock(NOW), cache=BalanceCache())
    app: FastAPI = entitlements_app(ents)
    app.include_router(access_router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        await c.post("/api/v1/features", json={"key": "gpt", "name": "GPT", "meterSlug": "tokens"})
        await c.post("/api/v1/features", json={"key": "sso", "name": "SSO"})
        await c.post("/api/v1/features", json={"key": "seats", "name": "Seats"})
        for subject in ("a", "b"):
            metered = {"type": "metered", "featureKey": "gpt", "measureUsageFrom": "2024-01-01T00:00:00Z",
                       "usagePeriod": {"interval": "MONTH", "anchor": "2024-01-01T00:00:00Z"}}  # fmt: skip
            assert (await c.post(f"/api/v1/subjects/{subject}/entitlements", json=metered)).status_code == 201
            grant = {
                "amount": 100,
                "effectiveAt": "2024-01-01T00:00:00Z",
                "expiration": {"duration": "YEAR", "count": 1},
            }
            assert (await c.post(f"/api/v1/subjects/{subject}/entitlements/gpt/grants", json=grant)).status_code == 201
        await c.post("/api/v1/subjects/a/entitlements", json={"type": "boolean", "featureKey": "sso"})
        await c.post(
            "/api/v1/subjects/a/entitlements", json={"type": "static", "featureKey": "seats", "config": {"n": 5}}
        )
        usage.add("tokens", "a", datetime(2024, 1, 5, tzinfo=UTC), 30)
        usage.add("tokens", "b", datetime(2024, 1, 5, tzinfo=UTC), 130)
        yield c, ents, usage
    ents.close()


async def test_subject_access_lists_every_feature_like_the_value_read(client: tuple) -> None:  # type: ignore[type-arg]
    c, _, _ = client
    r = await c.get("/api/v1/subjects/a/access")
    assert r.status_code == 200, r.text
    ents = r.json()["entitlements"]
    assert set(ents) == {"gpt", "sso", "seats"}
    for key, body in ents.items():
        single = (await c.get(f"/api/v1/subjects/a/entitlements/{key}/value")).json()
        assert body.pop("asOf")
        assert single.pop("asOf")
        assert body == single
    assert ents["gpt"]["usage"] == 30
    assert ents["gpt"]["balance"] == 70
    assert json.loads(ents["seats"]["config"]) == {"n": 5}
    assert (await c.get("/api/v1/subjects/nobody/access")).json() == {"entitlements": {}}


async def test_bulk_access_has_per_item_results_and_errors(client: tuple) -> None:  # type: ignore[type-arg]
    c, _, usage = client
    body = {"subjects": ["a", "b"], "features": ["gpt", "sso"]}
    r = await c.post("/api/v1/entitlements/access", json=body)
    assert r.status_code == 200, r.text
    out = r.json()["subjects"]
    assert out["a"]["entitlements"]["gpt"]["hasAccess"] is True
    assert out["b"]["entitlements"]["gpt"]["hasAccess"] is False  # 130 used of 100
    assert out["a"]["entitlements"]["sso"]["hasAccess"] is True
    assert out["b"]["entitlements"]["sso"]["error"]["status"] == 404
    calls = usage.calls
    again = (await c.post("/api/v1/entitlements/access", json=body)).json()["subjects"]
    assert usage.calls == calls  # warm: from the cache
    assert again["a"]["entitlements"]["gpt"] == out["a"]["entitlements"]["gpt"]
    bulk_calls = usage.bulk_calls
    await c.post("/api/v1/entitlements/access", json=body, headers={"Cache-Control": "no-cache"})
    assert usage.bulk_calls == bulk_calls + 1  # cold: one usage read for every subject of the meter
    assert usage.calls == calls
    every = (await c.post("/api/v1/entitlements/access", json={"subjects": ["a", "b"]})).json()["subjects"]
    assert set(every["a"]["entitlements"]) == {"gpt", "sso", "seats"}
    assert set(every["b"]["entitlements"]) == {"gpt"}


async def test_bulk_access_limits(client: tuple) -> None:  # type: ignore[type-arg]
    c, _, _ = client
    too_many = {"subjects": [f"s{i}" for i in range(101)]}
    r = await c.post("/api/v1/entitlements/access", json=too_many)
    assert r.status_code in (400, 422)
    assert (await c.post("/api/v1/entitlements/access", json={"subjects": []})).status_code in (400, 422)


async def test_access_routes_are_in_the_openapi_document(client: tuple) -> None:  # type: ignore[type-arg]
    c, _, _ = client
    doc = (await c.get("/openapi.json")).json()
    assert "/api/v1/subjects/{subjectIdOrKey}/access" in doc["paths"]
    bulk = doc["paths"]["/api/v1/entitlements/access"]["post"]
    assert "example" in bulk["responses"]["200"]["content"]["application/json"]


async def test_cold_bulk_reads_equal_single_reads_in_a_few_queries(client: tuple) -> None:  # type: ignore[type-arg]
    """Many subjects with grants, resets, expiries, a customer of two subjects and a late event: every cold
    bulk answer equals the single read's, and usage is read once per meter, not once per item."""
    c, ents, usage = client
    subjects = [f"s{i}" for i in range(12)]
    for i, subject in enumerate(subjects):
        metered = {"type": "metered", "featureKey": "gpt", "measureUsageFrom": "2023-11-01T00:00:00Z",
                   "usagePeriod": {"interval": "MONTH", "anchor": "2023-11-01T00:00:00Z"},
                   "isSoftLimit": i % 4 == 0, "issueAfterReset": 10 * i}  # fmt: skip
        assert (await c.post(f"/api/v1/subjects/{subject}/entitlements", json=metered)).status_code == 201
        grant = {"amount": 5 * i, "effectiveAt": "2023-11-15T00:00:00Z", "priority": 1 + i % 3,
                 "expiration": {"duration": "MONTH" if i % 2 else "YEAR", "count": 1},
                 "maxRolloverAmount": i}  # fmt: skip
        assert (await c.post(f"/api/v1/subjects/{subject}/entitlements/gpt/grants", json=grant)).status_code == 201
        if i % 3 == 0:
            reset = {"effectiveAt": "2023-12-20T00:00:00Z"}
            assert (await c.post(f"/api/v1/subjects/{subject}/entitlements/gpt/reset", json=reset)).status_code == 204
        for day in (2, 17, 28):
            usage.add("tokens", subject, datetime(2023, 11, day, tzinfo=UTC), i + day)
            usage.add("tokens", subject, datetime(2023, 12, day, tzinfo=UTC), 2 * i)
        usage.add("tokens", subject, datetime(2024, 1, 3, tzinfo=UTC), i)
    await ents.customers.create("default", CustomerInput(name="Pair", subject_keys=("pair-1", "pair-2")))
    pair = {"type": "metered", "featureKey": "gpt", "measureUsageFrom": "2024-01-01T00:00:00Z",
            "usagePeriod": {"interval": "MONTH", "anchor": "2024-01-01T00:00:00Z"}, "issueAfterReset": 50}  # fmt: skip
    assert (await c.post("/api/v1/subjects/pair-1/entitlements", json=pair)).status_code == 201
    usage.add("tokens", "pair-1", datetime(2024, 1, 4, tzinfo=UTC), 7)
    usage.add("tokens", "pair-2", datetime(2024, 1, 5, tzinfo=UTC), 8)
    asked = [*subjects, "pair-2", "a", "b", "nobody"]
    body = {"subjects": asked, "features": ["gpt", "sso", "seats"]}
    calls, bulk_calls = usage.calls, usage.bulk_calls
    r = await c.post("/api/v1/entitlements/access", json=body, headers={"Cache-Control": "no-cache"})
    assert r.status_code == 200, r.text
    assert usage.bulk_calls == bulk_calls + 1  # every metered item of the one meter, in one usage read
    assert usage.calls == calls
    out = r.json()["subjects"]
    assert out["pair-2"]["entitlements"]["gpt"]["usage"] == 15  # the customer's two subjects
    for subject in asked:
        for feature in ("gpt", "sso", "seats"):
            got = out[subject]["entitlements"][feature]
            single = await c.get(
                f"/api/v1/subjects/{subject}/entitlements/{feature}/value", headers={"Cache-Control": "no-cache"}
            )
            if single.status_code != 200:
                assert got["error"]["status"] == single.status_code, (subject, feature)
                continue
            expected = single.json()
            assert got.pop("asOf")
            assert expected.pop("asOf")
            assert got == expected, (subject, feature)
