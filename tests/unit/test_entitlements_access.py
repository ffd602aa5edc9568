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
    await c.post("/api/v1/entitlements/access", json=body, headers={"Cache-Control": "no-cache"})
    assert usage.calls > calls
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
