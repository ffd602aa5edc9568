"""Every response body the entitlement and customer routes publish in the OpenAPI document is what they
answer: real responses (metered, static and boolean entitlements, grants, values, history, customers, v2,
access) validated against the document's schemas. The fuzz test checks the same on generated requests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs  # schemathesis's JSON Schema validator (the fuzz test validates with it too)
import pytest
from fastapi import FastAPI

from common.clock import FrozenClock
from entitlements.access_http import router as access_router
from entitlements.cache.store import BalanceCache
from entitlements.customers_http import router as customers_router
from entitlements.db.migrate import upgrade_database
from entitlements.service import build_entitlements
from tests.support.entitlement_fakes import FakeMeters, FakeUsage, entitlements_app

T0 = datetime(2024, 1, 1, tzinfo=UTC)


class Checked:
    def __init__(self, client: httpx.AsyncClient, doc: dict[str, Any]) -> None:
        self.client, self.doc, self.checked = client, doc, 0

    def schema(self, template: str, method: str, status: int) -> dict[str, Any]:
        responses = self.doc["paths"][template][method]["responses"]
        return responses[str(status)]["content"]["application/json"]["schema"]  # type: ignore[no-any-return]

    async def call(self, method: str, template: str, path: str, body: object = None, status: int = 200) -> Any:
        content = None if body is None else json.dumps(body)
        r = await self.client.request(
            method.upper(), path, content=content, headers={"content-type": "application/json"}
        )
        assert r.status_code == status, r.text
        jsonschema_rs.Draft202012Validator(self.schema(template, method, status)).validate(r.json())
        self.checked += 1
        return r.json()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Checked]:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    upgrade_database(url)
    usage, meters = FakeUsage(), FakeMeters()
    meters.add("tokens")
    ents = build_entitlements(
        url, meters=meters, usage=usage, clock=FrozenClock(T0 + timedelta(days=10)), cache=BalanceCache()
    )
    usage.add("tokens", "acme", T0 + timedelta(days=1), "12.5")
    app: FastAPI = entitlements_app(ents)
    app.include_router(access_router)
    app.include_router(customers_router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        doc = (await c.get("/openapi.json")).json()
        yield Checked(c, doc)
    ents.close()


async def test_published_response_schemas_hold_for_real_responses(api: Checked) -> None:
    ent = "/api/v1/subjects/{subjectIdOrKey}/entitlements"
    await api.call(
        "post", "/api/v1/features", "/api/v1/features", {"key": "gpt", "name": "GPT", "meterSlug": "tokens"}, 201
    )
    await api.call("post", "/api/v1/features", "/api/v1/features", {"key": "sso", "name": "SSO"}, 201)
    await api.call("post", "/api/v1/features", "/api/v1/features", {"key": "seats", "name": "Seats"}, 201)
    await api.call("get", "/api/v1/features", "/api/v1/features")
    period = {"interval": "MONTH", "anchor": "2024-01-01T00:00:00Z"}
    metered = {"type": "metered", "featureKey": "gpt", "usagePeriod": period,
               "measureUsageFrom": "2024-01-01T00:00:00Z", "issueAfterReset": 10}  # fmt: skip
    m = await api.call("post", ent, "/api/v1/subjects/acme/entitlements", metered, 201)
    await api.call("post", ent, "/api/v1/subjects/acme/entitlements", {"type": "boolean", "featureKey": "sso"}, 201)
    static = {"type": "static", "featureKey": "seats", "config": {"n": 5}}
    await api.call("post", ent, "/api/v1/subjects/acme/entitlements", static, 201)
    await api.call("get", ent, "/api/v1/subjects/acme/entitlements")
    await api.call("get", "/api/v1/entitlements", "/api/v1/entitlements")
    paged = await api.call("get", "/api/v1/entitlements", "/api/v1/entitlements?page=1&pageSize=2")
    assert paged["totalCount"] == 3
    await api.call("get", "/api/v1/entitlements/{entitlementId}", f"/api/v1/entitlements/{m['id']}")
    grant = {"amount": "100.5", "effectiveAt": "2024-01-01T00:00:00Z", "expiration": {"duration": "YEAR", "count": 1},
             "recurrence": {"interval": "MONTH"}}  # fmt: skip
    grants = ent + "/{entitlementIdOrFeatureKey}/grants"
    await api.call("post", grants, "/api/v1/subjects/acme/entitlements/gpt/grants", grant, 201)
    await api.call("get", grants, "/api/v1/subjects/acme/entitlements/gpt/grants")
    await api.call("get", "/api/v1/grants", "/api/v1/grants")
    value = ent + "/{entitlementIdOrFeatureKey}/value"
    for feature in ("gpt", "sso", "seats", "gpt"):  # the last one from the cache (pre-encoded)
        await api.call("get", value, f"/api/v1/subjects/acme/entitlements/{feature}/value")
    history = ent + "/{entitlementId}/history"
    await api.call(
        "get", history, f"/api/v1/subjects/acme/entitlements/{m['id']}/history?windowSize=DAY&from=2024-01-01T00:00:00Z"
    )
    await api.call("get", "/api/v1/subjects/{subjectIdOrKey}/access", "/api/v1/subjects/acme/access")
    bulk = {"subjects": ["acme", "nobody"], "features": ["gpt", "sso"]}
    await api.call("post", "/api/v1/entitlements/access", "/api/v1/entitlements/access", bulk)

    customer = {"name": "Globex", "key": "globex", "usageAttribution": {"subjectKeys": ["g1"]}}
    await api.call("post", "/api/v1/customers", "/api/v1/customers", customer, 201)
    await api.call(
        "post",
        "/api/v1/customers",
        "/api/v1/customers",
        {"name": "No key", "usageAttribution": {"subjectKeys": ["x"]}},
        201,
    )
    await api.call("get", "/api/v1/customers", "/api/v1/customers")
    one = "/api/v1/customers/{customerIdOrKey}"
    await api.call("get", one, "/api/v1/customers/globex")
    await api.call("put", one, "/api/v1/customers/globex", {**customer, "currency": "EUR"})
    v2 = "/api/v2/customers/{customerIdOrKey}/entitlements"
    v2_metered = {k: v for k, v in metered.items() if k != "issueAfterReset"}
    await api.call("post", v2, "/api/v2/customers/globex/entitlements", {**v2_metered, "issue": {"amount": 5}}, 201)
    await api.call("get", v2, "/api/v2/customers/globex/entitlements")
    await api.call("get", v2 + "/{entitlementIdOrFeatureKey}", "/api/v2/customers/globex/entitlements/gpt")
    v2_grants = v2 + "/{entitlementIdOrFeatureKey}/grants"
    v2_grant = {"amount": 3, "effectiveAt": "2024-01-01T00:00:00Z"}
    await api.call("post", v2_grants, "/api/v2/customers/globex/entitlements/gpt/grants", v2_grant, 201)
    await api.call(
        "get", v2 + "/{entitlementIdOrFeatureKey}/grants", "/api/v2/customers/globex/entitlements/gpt/grants"
    )
    await api.call("get", v2 + "/{entitlementIdOrFeatureKey}/value", "/api/v2/customers/globex/entitlements/gpt/value")
    await api.call("get", "/api/v1/customers/{customerIdOrKey}/access", "/api/v1/customers/globex/access")
    await api.call("get", "/api/v2/entitlements", "/api/v2/entitlements")
    await api.call("get", "/api/v2/grants", "/api/v2/grants")
    assert api.checked >= 35
