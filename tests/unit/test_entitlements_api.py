"""The entitlement API over a real SQLite file, with in-memory meter ports and a frozen clock."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from common.clock import FrozenClock
from common.usage import MeterRef
from entitlements.db.migrate import upgrade_database
from entitlements.service import Entitlements, build_entitlements
from tests.support.entitlement_fakes import FakeMeters, FakeUsage, entitlements_app
from tests.support.openapi_check import validating_hook

T0 = datetime(2024, 1, 1, tzinfo=UTC)


class Env:
    def __init__(self, ents: Entitlements, client: httpx.AsyncClient, clock: FrozenClock, usage: FakeUsage) -> None:
        self.ents = ents
        self.client = client
        self.clock = clock
        self.usage = usage
        self.meters: FakeMeters = ents.deps.meters  # type: ignore[assignment]

    async def post(self, path: str, body: object, status: int = 201) -> dict:
        r = await self.client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
        assert r.status_code == status, r.text
        return r.json() if r.content else {}

    async def get(self, path: str, status: int = 200, **params: str) -> dict:
        r = await self.client.get(path, params=params)
        assert r.status_code == status, r.text
        return r.json()

    async def metered(self, subject: str = "acme", **extra: object) -> dict:
        self.meters.add("tokens", "model")
        await self.post("/api/v1/features", {"key": "gpt", "name": "GPT", "meterSlug": "tokens"})
        body = {
            "type": "metered",
            "featureKey": "gpt",
            "usagePeriod": {"interval": "MONTH", "anchor": "2024-01-01T00:00:00Z"},
        }
        body.update(extra)
        return await self.post(f"/api/v1/subjects/{subject}/entitlements", body)

    async def value(self, subject: str = "acme", key: str = "gpt", time: str | None = None) -> dict:
        params = {"time": time} if time else {}
        body = await self.get(f"/api/v1/subjects/{subject}/entitlements/{key}/value", **params)
        assert body.pop("asOf").endswith("Z")  # freshness, next to OpenMeter's unchanged fields
        return body


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    upgrade_database(url)
    clock = FrozenClock(T0)
    usage = FakeUsage()
    ents = build_entitlements(url, meters=FakeMeters(), usage=usage, clock=clock)
    app = entitlements_app(ents)
    hooks = {"response": [validating_hook(app)]}  # every success body against its published schema
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test", event_hooks=hooks
    ) as client:
        yield Env(ents, client, clock, usage)
    ents.close()


async def test_features_validate_meter_and_filters_and_archive(env: Env) -> None:
    env.meters.add("tokens", "model")
    await env.post("/api/v1/features", {"key": "x", "name": "X", "meterSlug": "nope"}, 400)
    bad = await env.post(
        "/api/v1/features",
        {"key": "x", "name": "X", "meterSlug": "tokens", "meterGroupByFilters": {"region": "eu"}},
        400,
    )
    assert "region" in bad["detail"]
    f = await env.post(
        "/api/v1/features",
        {"key": "gpt4", "name": "GPT-4", "meterSlug": "tokens", "meterGroupByFilters": {"model": "gpt-4"}},
    )
    assert f["meterGroupByFilters"] == {"model": "gpt-4"}
    assert f["archivedAt"] is None
    dup = await env.post("/api/v1/features", {"key": "gpt4", "name": "again"}, 409)
    assert f["id"] in dup["detail"]
    assert (await env.get(f"/api/v1/features/{f['id']}"))["key"] == "gpt4"
    assert [x["key"] for x in await env.get("/api/v1/features")] == ["gpt4"]
    r = await env.client.delete(f"/api/v1/features/{f['id']}")
    assert r.status_code == 204
    assert (await env.get(f"/api/v1/features/{f['id']}"))["archivedAt"] is not None
    assert await env.get("/api/v1/features") == []
    assert len(await env.get("/api/v1/features", includeArchived="true")) == 1
    await env.post("/api/v1/subjects/s/entitlements", {"type": "boolean", "featureId": f["id"]}, 400)
    await env.get("/api/v1/features/missing", 404)


async def test_boolean_and_static_values(env: Env) -> None:
    await env.post("/api/v1/features", {"key": "sso", "name": "SSO"})
    await env.post("/api/v1/features", {"key": "seats", "name": "Seats"})
    b = await env.post("/api/v1/subjects/acme/entitlements", {"type": "boolean", "featureKey": "sso"})
    assert b["type"] == "boolean"
    assert b["subjectKey"] == "acme"
    s = await env.post(
        "/api/v1/subjects/acme/entitlements", {"type": "static", "featureKey": "seats", "config": {"max": 5}}
    )
    assert json.loads(s["config"]) == {"max": 5}
    assert await env.value(key="sso") == {"hasAccess": True}
    v = await env.value(key="seats")
    assert v["hasAccess"] is True
    assert json.loads(v["config"]) == {"max": 5}
    await env.get("/api/v1/subjects/other/entitlements/sso/value", 404)


async def test_one_active_entitlement_per_subject_and_feature(env: Env) -> None:
    first = await env.metered()
    conflict = await env.post("/api/v1/subjects/acme/entitlements", {"type": "boolean", "featureKey": "gpt"}, 409)
    assert first["id"] in conflict["detail"]
    assert conflict["conflictingEntityId"] == first["id"]
    r = await env.client.delete(f"/api/v1/subjects/acme/entitlements/{first['id']}")
    assert r.status_code == 204
    second = await env.post("/api/v1/subjects/acme/entitlements", {"type": "boolean", "featureKey": "gpt"})
    assert second["id"] != first["id"]
    listed = await env.get("/api/v1/entitlements", includeDeleted="true")
    assert {e["id"] for e in listed} == {first["id"], second["id"]}


async def test_metered_entitlement_shape(env: Env) -> None:
    env.clock.advance_to(T0 + timedelta(days=40))
    e = await env.metered(measureUsageFrom="CURRENT_PERIOD_START", issueAfterReset=10)
    assert e["usagePeriod"]["interval"] == "MONTH"
    assert e["currentUsagePeriod"] == {"from": "2024-02-01T00:00:00.000Z", "to": "2024-03-01T00:00:00.000Z"}
    assert e["measureUsageFrom"] == "2024-02-01T00:00:00.000Z"
    assert e["issueAfterReset"] == 10
    got = await env.get(f"/api/v1/subjects/acme/entitlements/{e['id']}")
    assert got["id"] == e["id"]
    assert (await env.get(f"/api/v1/entitlements/{e['id']}"))["featureKey"] == "gpt"


async def test_grants_burn_usage_exactly(env: Env) -> None:
    await env.metered(measureUsageFrom="2024-01-01T00:00:00Z")
    g = await env.post(
        "/api/v1/subjects/acme/entitlements/gpt/grants",
        {"amount": 0.1, "effectiveAt": "2024-01-01T00:00:00Z", "expiration": {"duration": "YEAR", "count": 1}},
    )
    await env.post(
        "/api/v1/subjects/acme/entitlements/gpt/grants",
        {
            "amount": 0.2,
            "priority": 2,
            "effectiveAt": "2024-01-01T00:00:00Z",
            "expiration": {"duration": "YEAR", "count": 1},
        },
    )
    assert g["expiresAt"] == "2025-01-01T00:00:00.000Z"
    env.usage.add("tokens", "acme", T0 + timedelta(hours=1), "0.25", model="gpt-4")
    env.clock.advance_to(T0 + timedelta(days=2))
    r = await env.client.get("/api/v1/subjects/acme/entitlements/gpt/value")
    # Amounts travel as exact JSON numbers: 0.3 - 0.25 is 0.05, not 0.04999999999999999.
    assert b'"balance":0.05' in r.content
    v = r.json()
    assert v["hasAccess"] is True
    assert Decimal(str(v["usage"])) == Decimal("0.25")
    assert v["overage"] == 0
    assert Decimal(str(v["totalAvailableGrantAmount"])) == Decimal("0.3")
    grants = await env.get("/api/v1/subjects/acme/entitlements/gpt/grants")
    assert len(grants) == 2
    r = await env.client.delete(f"/api/v1/grants/{g['id']}")
    assert r.status_code == 204
    assert [x["id"] for x in await env.get("/api/v1/grants")] == [x["id"] for x in grants if x["id"] != g["id"]]
    assert len(await env.get("/api/v1/grants", includeDeleted="true")) == 2
    v = await env.value()
    # The voided grant's 0.1 was burnt first (priority 1) and its rest ends; 0.2 - 0.15 remains.
    assert Decimal(str(v["balance"])) == Decimal("0.05")
    again = await env.client.delete(f"/api/v1/grants/{g['id']}")
    assert again.status_code == 409


async def test_reset_rolls_over_and_preserves_overage(env: Env) -> None:
    """The worked example of the issue: grant 100, min = max rollover 50, usage 110, preserve overage -> 40."""
    e = await env.metered(measureUsageFrom="2024-01-01T00:00:00Z", preserveOverageAtReset=True)
    await env.post(
        "/api/v1/subjects/acme/entitlements/gpt/grants",
        {
            "amount": 100,
            "effectiveAt": "2024-01-01T00:00:00Z",
            "expiration": {"duration": "YEAR", "count": 1},
            "minRolloverAmount": 50,
            "maxRolloverAmount": 50,
        },
    )
    env.usage.add("tokens", "acme", T0 + timedelta(days=3), 110)
    env.clock.advance_to(T0 + timedelta(days=10))
    before = await env.value()
    assert (before["balance"], before["overage"], before["hasAccess"]) == (0, 10, False)
    await env.post(f"/api/v1/subjects/acme/entitlements/{e['id']}/reset", {"effectiveAt": "2024-01-05T00:00:00Z"}, 204)
    after = await env.value()
    assert (after["balance"], after["overage"], after["usage"]) == (40, 0, 0)
    ent = await env.get(f"/api/v1/subjects/acme/entitlements/{e['id']}")
    assert ent["lastReset"] == "2024-01-05T00:00:00.000Z"
    assert ent["currentUsagePeriod"]["from"] == "2024-01-05T00:00:00.000Z"
    await env.post(f"/api/v1/subjects/acme/entitlements/{e['id']}/reset", {"effectiveAt": "2024-01-04T00:00:00Z"}, 400)
    await env.post(f"/api/v1/subjects/acme/entitlements/{e['id']}/reset", {"effectiveAt": "2024-02-04T00:00:00Z"}, 400)


async def test_value_at_a_past_instant_and_history(env: Env) -> None:
    e = await env.metered(measureUsageFrom="2024-01-01T00:00:00Z")
    await env.post(
        "/api/v1/subjects/acme/entitlements/gpt/grants",
        {"amount": 100, "effectiveAt": "2024-01-01T00:00:00Z", "expiration": {"duration": "MONTH", "count": 3}},
    )
    for day in range(5):
        env.usage.add("tokens", "acme", T0 + timedelta(days=day, hours=12), 10)
    env.clock.advance_to(T0 + timedelta(days=10))
    past = await env.value(time="2024-01-03T00:00:00Z")
    assert (past["balance"], past["usage"]) == (80, 20)
    h = await env.get(
        f"/api/v1/subjects/acme/entitlements/{e['id']}/history",
        **{"from": "2024-01-01T00:00:00Z", "to": "2024-01-06T00:00:00Z", "windowSize": "DAY"},
    )
    assert [(w["period"]["from"][:10], w["usage"], w["balanceAtStart"]) for w in h["windowedHistory"]] == [
        ("2024-01-01", 10, 100),
        ("2024-01-02", 10, 90),
        ("2024-01-03", 10, 80),
        ("2024-01-04", 10, 70),
        ("2024-01-05", 10, 60),
    ]
    burn = h["burndownHistory"]
    assert sum(s["usage"] for s in burn) == 50
    assert burn[-1]["balanceAtEnd"] == 50
    await env.get(
        f"/api/v1/subjects/acme/entitlements/{e['id']}/history", 400, windowSize="DAY", windowTimeZone="Mars/Olympus"
    )


async def test_grant_validation(env: Env) -> None:
    await env.metered()
    base = {"effectiveAt": "2024-01-01T00:00:00Z", "expiration": {"duration": "DAY", "count": 1}}
    await env.post("/api/v1/subjects/acme/entitlements/gpt/grants", {**base, "amount": -1}, 400)
    await env.post(
        "/api/v1/subjects/acme/entitlements/gpt/grants",
        {**base, "amount": 1, "minRolloverAmount": 5, "maxRolloverAmount": 1},
        400,
    )
    await env.post(
        "/api/v1/subjects/acme/entitlements/gpt/grants",
        {**base, "amount": 1, "effectiveAt": "2024-01-01T00:00:00"},
        400,
    )
    await env.post("/api/v1/subjects/acme/entitlements/nope/grants", {**base, "amount": 1}, 404)


async def test_override_replaces_the_active_entitlement(env: Env) -> None:
    first = await env.metered(measureUsageFrom="2024-01-01T00:00:00Z")
    r = await env.client.put(
        "/api/v1/subjects/acme/entitlements/gpt/override",
        content=json.dumps({"type": "boolean", "featureKey": "gpt"}),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 201, r.text
    second = r.json()
    assert second["type"] == "boolean"
    assert second["id"] != first["id"]
    assert (await env.get(f"/api/v1/subjects/acme/entitlements/{first['id']}"))["deletedAt"] is not None
    assert await env.value() == {"hasAccess": True}
    assert [e["id"] for e in await env.get("/api/v1/subjects/acme/entitlements")] == [second["id"]]
    r = await env.client.put(
        "/api/v1/subjects/nobody/entitlements/gpt/override",
        content=json.dumps({"type": "boolean", "featureKey": "gpt"}),
    )
    assert r.status_code == 404


async def test_feature_group_by_filters_select_the_usage(env: Env) -> None:
    env.meters.add("tokens", "model")
    await env.post(
        "/api/v1/features",
        {"key": "gpt4", "name": "GPT-4", "meterSlug": "tokens", "meterGroupByFilters": {"model": "gpt-4"}},
    )
    await env.post(
        "/api/v1/subjects/acme/entitlements",
        {
            "type": "metered",
            "featureKey": "gpt4",
            "usagePeriod": {"interval": "P1D", "anchor": "2024-01-01T00:00:00Z"},
            "measureUsageFrom": "2024-01-01T00:00:00Z",
            "issueAfterReset": 10,
        },
    )
    env.usage.add("tokens", "acme", T0 + timedelta(hours=1), 3, model="gpt-4")
    env.usage.add("tokens", "acme", T0 + timedelta(hours=2), 100, model="gpt-3.5")
    env.clock.advance_to(T0 + timedelta(hours=5))
    v = await env.value(key="gpt4")
    assert (v["usage"], v["balance"], v["totalAvailableGrantAmount"]) == (3, 7, 10)
    env.clock.advance_to(T0 + timedelta(days=1, hours=1))
    # A new daily period: issueAfterReset tops the balance up to 10 again.
    assert (await env.value(key="gpt4"))["balance"] == 10


# ---- fidelity to OpenMeter's rules ----


@pytest.mark.parametrize("aggregation", ["UNIQUE_COUNT", "AVG", "MIN", "MAX", "LATEST"])
async def test_features_only_on_sum_and_count_meters(env: Env, aggregation: str) -> None:
    env.meters.meters["peak"] = MeterRef(slug="peak", aggregation=aggregation, event_type="peak")
    bad = await env.post("/api/v1/features", {"key": "p", "name": "P", "meterSlug": "peak"}, 400)
    assert bad["field"] == "meterSlug"
    assert "SUM or COUNT" in bad["detail"]
    env.meters.meters["calls"] = MeterRef(slug="calls", aggregation="COUNT", event_type="calls")
    await env.post("/api/v1/features", {"key": "c", "name": "C", "meterSlug": "calls"})


async def test_a_reset_must_be_strictly_after_the_last_reset(env: Env) -> None:
    e = await env.metered(measureUsageFrom="2024-01-01T00:00:00Z")
    env.clock.advance_to(T0 + timedelta(days=10))
    reset = f"/api/v1/subjects/acme/entitlements/{e['id']}/reset"
    at_start = await env.post(reset, {"effectiveAt": "2024-01-01T00:00:00Z"}, 400)  # = measureUsageFrom
    assert "must be after last reset" in at_start["detail"]
    await env.post(reset, {"effectiveAt": "2024-01-03T00:00:00Z"}, 204)
    again = await env.post(reset, {"effectiveAt": "2024-01-03T00:00:00Z"}, 400)  # = the last reset
    assert "must be after last reset (2024-01-03T00:00:00Z)" in again["detail"]
    await env.post(reset, {"effectiveAt": "2024-01-03T00:00:00.001Z"}, 204)


async def test_grant_recurrence_carries_interval_iso(env: Env) -> None:
    await env.metered()
    grant = await env.post(
        "/api/v1/subjects/acme/entitlements/gpt/grants",
        {
            "amount": 10,
            "effectiveAt": "2024-01-01T00:00:00Z",
            "expiration": {"duration": "YEAR", "count": 1},
            "recurrence": {"interval": "MONTH", "anchor": "2024-01-01T00:00:00Z"},
        },
    )
    assert grant["recurrence"]["interval"] == "MONTH"
    assert grant["recurrence"]["intervalISO"] == "P1M"


async def test_windowed_history_has_every_window(env: Env) -> None:
    """OpenMeter's case: 12 hourly windows of which 6 have usage -> 12 windows, the others with usage 0."""
    e = await env.metered(measureUsageFrom="2024-01-01T00:00:00Z")
    await env.post(
        "/api/v1/subjects/acme/entitlements/gpt/grants",
        {"amount": 100, "effectiveAt": "2024-01-01T00:00:00Z", "expiration": {"duration": "MONTH", "count": 3}},
    )
    for hour in (0, 2, 4, 6, 8, 10):
        env.usage.add("tokens", "acme", T0 + timedelta(hours=hour, minutes=30), 5)
    env.clock.advance_to(T0 + timedelta(days=1))
    h = await env.get(
        f"/api/v1/subjects/acme/entitlements/{e['id']}/history",
        **{"from": "2024-01-01T00:00:00Z", "to": "2024-01-01T12:00:00Z", "windowSize": "HOUR"},
    )
    windows = h["windowedHistory"]
    assert len(windows) == 12
    assert [w["usage"] for w in windows] == [5, 0] * 6
    assert [w["balanceAtStart"] for w in windows] == [100, 95, 95, 90, 90, 85, 85, 80, 80, 75, 75, 70]
    assert windows[-1]["period"]["to"] == "2024-01-01T12:00:00.000Z"


async def test_burndown_history_follows_the_engine_segments(env: Env) -> None:
    """A period reset inside the range is a zero-length segment; display windows never split a segment."""
    e = await env.metered(measureUsageFrom="2024-01-01T00:00:00Z", preserveOverageAtReset=True)
    await env.post(
        "/api/v1/subjects/acme/entitlements/gpt/grants",
        {
            "amount": 100,
            "effectiveAt": "2024-01-01T00:00:00Z",
            "expiration": {"duration": "YEAR", "count": 1},
            "minRolloverAmount": 50,
            "maxRolloverAmount": 50,
        },
    )
    env.usage.add("tokens", "acme", T0 + timedelta(days=10), 110)
    env.clock.advance_to(T0 + timedelta(days=40))
    burndowns = []
    for size in ("HOUR", "DAY", "MONTH"):
        h = await env.get(
            f"/api/v1/subjects/acme/entitlements/{e['id']}/history",
            **{"from": "2024-01-01T00:00:00Z", "to": "2024-02-01T00:00:00Z", "windowSize": size},
        )
        burndowns.append(h["burndownHistory"])
    assert burndowns[0] == burndowns[1] == burndowns[2]
    first, reset = burndowns[0]
    assert first["period"] == {"from": "2024-01-01T00:00:00.000Z", "to": "2024-02-01T00:00:00.000Z"}
    assert (first["usage"], first["overage"], first["balanceAtEnd"]) == (110, 10, 0)
    assert reset["period"] == {"from": "2024-02-01T00:00:00.000Z", "to": "2024-02-01T00:00:00.000Z"}
    assert (reset["balanceAtStart"], reset["balanceAtEnd"], reset["overage"], reset["usage"]) == (50, 40, 0, 0)
    assert [u["usage"] for u in reset["grantUsages"]] == [10]


# ---- hostile inputs: a 400 naming the limit, nothing stored, the namespace keeps working ----

GRANT = {"amount": 10, "effectiveAt": "2024-01-01T00:00:00Z", "expiration": {"duration": "YEAR", "count": 1}}


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"usagePeriod": {"interval": "P8000Y"}}, "usagePeriod.interval"),
        ({"usagePeriod": {"interval": "P1000000Y"}}, "usagePeriod.interval"),
        ({"usagePeriod": {"interval": "P99999999D"}}, "usagePeriod.interval"),
        ({"usagePeriod": {"interval": "PT1S"}}, "usagePeriod.interval"),
        ({"usagePeriod": {"interval": "P" + "9" * 5000 + "D"}}, "usagePeriod.interval"),
        ({"measureUsageFrom": "0001-01-01T00:00:00Z"}, "measureUsageFrom"),
        ({"issueAfterResetPriority": 2**63}, "issueAfterResetPriority"),
        ({"issueAfterReset": "1e20000000"}, "issueAfterReset"),
    ],
)
async def test_hostile_entitlements_are_400_and_leave_nothing(env: Env, extra: dict[str, object], field: str) -> None:
    env.meters.add("tokens", "model")
    await env.post("/api/v1/features", {"key": "gpt", "name": "GPT", "meterSlug": "tokens"})
    body = {"type": "metered", "featureKey": "gpt", "usagePeriod": {"interval": "MONTH"}, **extra}
    bad = await env.post("/api/v1/subjects/acme/entitlements", body, 400)
    assert bad["field"] == field, bad
    assert await env.get("/api/v1/entitlements") == []
    assert await env.get("/api/v1/entitlements", includeDeleted="true") == []


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"amount": "1e20000000"}, "amount"),
        ({"amount": "1E+999999999999999999"}, "amount"),
        ({"amount": "1e200"}, "amount"),
        ({"amount": "0.0000000000000000001"}, "amount"),
        ({"amount": "12345678901234567890.1234567890123456789"}, "amount"),
        ({"effectiveAt": "0001-01-01T00:00:00Z"}, "effectiveAt"),
        ({"effectiveAt": "1969-12-31T00:00:00Z"}, "effectiveAt"),
        ({"effectiveAt": "9999-12-31T23:59:59Z"}, "effectiveAt"),
        ({"expiration": {"duration": "YEAR", "count": 100000}}, "expiration"),
        ({"expiration": {"duration": "YEAR", "count": 101}}, "expiration"),
        ({"recurrence": {"interval": "P8000Y", "anchor": "2024-01-01T00:00:00Z"}}, "recurrence.interval"),
        ({"recurrence": {"interval": "PT1S", "anchor": "2024-01-01T00:00:00Z"}}, "recurrence.interval"),
        ({"priority": 2**31}, "priority"),
    ],
)
async def test_hostile_grants_are_400_and_leave_nothing(env: Env, patch: dict[str, object], field: str) -> None:
    await env.metered()
    bad = await env.post("/api/v1/subjects/acme/entitlements/gpt/grants", {**GRANT, **patch}, 400)
    assert bad["field"] == field, bad
    assert await env.get("/api/v1/grants") == []
    await env.value()  # the entitlement still reads


async def test_the_largest_amount_the_api_accepts_is_exact(env: Env) -> None:
    await env.metered()
    top = "99999999999999999999999999999.999999999"  # 29 integer digits, 9 decimals: 38 significant
    await env.post("/api/v1/subjects/acme/entitlements/gpt/grants", {**GRANT, "amount": top})
    assert f'"amount":{top}' in (await env.client.get("/api/v1/grants")).text
    env.usage.add("tokens", "acme", T0 + timedelta(hours=1), "0.000000001")
    env.clock.advance_to(T0 + timedelta(days=1))
    assert (
        '"balance":99999999999999999999999999999.999999998'
        in (await env.client.get("/api/v1/subjects/acme/entitlements/gpt/value")).text
    )


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/features",
        "/api/v1/subjects/acme/entitlements",
        "/api/v1/subjects/acme/entitlements/gpt/grants",
        "/api/v1/subjects/acme/entitlements/gpt/override",
        "/api/v1/subjects/acme/entitlements/gpt/reset",
    ],
)
async def test_a_deeply_nested_body_is_a_400_on_every_route(env: Env, path: str) -> None:
    await env.metered()
    deep = "[" * 10_000 + "]" * 10_000
    r = await env.client.request(
        "PUT" if path.endswith("override") else "POST", path, content=deep, headers={"content-type": "application/json"}
    )
    assert r.status_code == 400, r.text
    assert "nested deeper" in r.json()["detail"]
    shallow_string = '{"key": "' + "[" * 10_000 + '", "name": "x"}'
    r = await env.client.post("/api/v1/features", content=shallow_string, headers={"content-type": "application/json"})
    assert r.status_code != 500


@pytest.mark.parametrize("bad", ['"a\\u0000b"', '"\\ud800"'])
async def test_nul_and_lone_surrogates_in_bodies_are_a_400(env: Env, bad: str) -> None:
    r = await env.client.post(
        "/api/v1/features", content='{"key": ' + bad + ', "name": "x"}', headers={"content-type": "application/json"}
    )
    assert r.status_code == 400, r.text
    assert await env.get("/api/v1/features") == []
