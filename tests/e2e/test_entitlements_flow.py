"""Entitlements end to end, in one test, against a real `metergate dev` subprocess with a frozen test clock:
events through the ingest path -> meter -> feature -> entitlement -> grants -> value -> reset -> history.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_dev_server import DevServer, running_dev_server

pytestmark = pytest.mark.e2e

FROZEN_AT = "2024-01-01T00:00:00Z"


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[DevServer]:
    with running_dev_server(tmp_path / "data", {"METERGATE_CLOCK_FROZEN_AT": FROZEN_AT}) as server:
        yield server


def event(i: int, day: int, tokens: int, subject: str = "acme") -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"e2e-{i}",
        "source": "e2e",
        "type": "tokens",
        "subject": subject,
        "time": f"2024-01-{day:02d}T12:00:00.000Z",
        "data": {"tokens": tokens, "model": "gpt-4"},
    }


def eventually(fetch: Any, ready: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if ready(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def test_entitlement_flow_through_a_running_metergate(dev: DevServer) -> None:
    with httpx.Client(base_url=dev.base_url, timeout=10) as c:

        def ok(r: httpx.Response, status: int) -> Any:
            assert r.status_code == status, r.text
            return r.json() if r.content else None

        ok(
            c.post(
                "/api/v1/meters",
                json={
                    "slug": "tokens",
                    "aggregation": "SUM",
                    "eventType": "tokens",
                    "valueProperty": "$.tokens",
                    "groupBy": {"model": "$.model"},
                },
            ),
            201,
        )
        ok(
            c.post(
                "/api/v1/features",
                json={"key": "gpt4", "name": "GPT-4", "meterSlug": "tokens", "meterGroupByFilters": {"model": "gpt-4"}},
            ),
            201,
        )
        ent = ok(
            c.post(
                "/api/v1/subjects/acme/entitlements",
                json={
                    "type": "metered",
                    "featureKey": "gpt4",
                    "usagePeriod": {"interval": "MONTH", "anchor": FROZEN_AT},
                    "measureUsageFrom": FROZEN_AT,
                },
            ),
            201,
        )
        grant_body = {"effectiveAt": FROZEN_AT, "expiration": {"duration": "YEAR", "count": 1}}
        ok(c.post("/api/v1/subjects/acme/entitlements/gpt4/grants", json={**grant_body, "amount": 1000}), 201)
        ok(
            c.post(
                "/api/v1/subjects/acme/entitlements/gpt4/grants",
                json={**grant_body, "amount": 50, "priority": 5, "maxRolloverAmount": 50},
            ),
            201,
        )

        batch = [event(i, day=1 + i, tokens=100) for i in range(12)] + [event(99, 3, 7, subject="other")]
        r = c.post(
            "/api/v1/events",
            content=json.dumps(batch),
            headers={"content-type": "application/cloudevents-batch+json"},
        )
        assert r.status_code == 204, r.text
        ok(c.post("/api/v1/debug/clock", json={"time": "2024-01-20T00:00:00Z"}), 200)

        def value() -> Any:
            return ok(c.get("/api/v1/subjects/acme/entitlements/gpt4/value"), 200)

        v = eventually(value, lambda v: v["usage"] == 1200)
        # 1200 used: the 1000 grant (priority 1) first, then 50 (priority 5); 150 overage.
        assert v.pop("asOf")  # freshness (every value answer carries it), next to OpenMeter's fields
        assert v == {"hasAccess": False, "balance": 0, "usage": 1200, "overage": 150, "totalAvailableGrantAmount": 1050}
        past = ok(c.get("/api/v1/subjects/acme/entitlements/gpt4/value", params={"time": "2024-01-05T00:00:00Z"}), 200)
        assert (past["usage"], past["balance"]) == (400, 650)

        ok(
            c.post(
                f"/api/v1/subjects/acme/entitlements/{ent['id']}/reset", json={"effectiveAt": "2024-01-10T00:00:00Z"}
            ),
            204,
        )
        after = value()
        # Reset on Jan 10 (900 used by then, all from the 1000 grant): the 1000 grant keeps nothing (max rollover
        # 0), the untouched 50 grant rolls over; usage since the reset (Jan 10-12 = 300) burns it, 250 overage.
        assert (after["usage"], after["balance"], after["overage"]) == (300, 0, 250)

        h = ok(
            c.get(
                f"/api/v1/subjects/acme/entitlements/{ent['id']}/history",
                params={"from": "2024-01-01T00:00:00Z", "to": "2024-01-09T00:00:00Z", "windowSize": "DAY"},
            ),
            200,
        )
        assert [w["usage"] for w in h["windowedHistory"]] == [100] * 8
        assert [w["balanceAtStart"] for w in h["windowedHistory"]] == [1050 - 100 * d for d in range(8)]
        assert sum(s["usage"] for s in h["burndownHistory"]) == 800

        ent_now = ok(c.get(f"/api/v1/subjects/acme/entitlements/{ent['id']}"), 200)
        assert ent_now["lastReset"] == "2024-01-10T00:00:00.000Z"
        assert ent_now["currentUsagePeriod"]["from"] == "2024-01-10T00:00:00.000Z"
        # The meter backs a feature: deleting it is refused.
        assert c.delete("/api/v1/meters/tokens").status_code == 409
