"""The balance cache as a gateway sees it, against a running `metergate dev`: an ingested event and a
grant show in the very next value read that follows them (the cache is warm before each)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.e2e.test_dev_server import DevServer, running_dev_server

pytestmark = pytest.mark.e2e


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[DevServer]:
    with running_dev_server(tmp_path / "data") as server:
        yield server


def ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json() if r.content else None


def test_ingest_and_grant_show_in_the_next_read(dev: DevServer) -> None:
    now = datetime.now(UTC)
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0).isoformat().replace("+00:00", "Z")
    value_path = "/api/v1/subjects/acme/entitlements/llm/value"
    with httpx.Client(base_url=dev.base_url, timeout=30) as c:
        meter = {"slug": "tokens", "aggregation": "SUM", "eventType": "tokens", "valueProperty": "$.tokens"}
        ok(c.post("/api/v1/meters", json=meter), 201)
        ok(c.post("/api/v1/features", json={"key": "llm", "name": "LLM", "meterSlug": "tokens"}), 201)
        entitlement = {"type": "metered", "featureKey": "llm", "measureUsageFrom": month,
                       "usagePeriod": {"interval": "MONTH", "anchor": month}}  # fmt: skip
        ok(c.post("/api/v1/subjects/acme/entitlements", json=entitlement), 201)
        first = ok(c.get(value_path))
        assert (first["balance"], first["usage"], first["hasAccess"]) == (0, 0, False)
        assert ok(c.get(value_path))["asOf"] == first["asOf"]  # warm: the same computation

        grant = {"amount": 100, "effectiveAt": month, "expiration": {"duration": "YEAR", "count": 1}}
        ok(c.post("/api/v1/subjects/acme/entitlements/llm/grants", json=grant), 201)
        after_grant = ok(c.get(value_path))
        assert (after_grant["balance"], after_grant["hasAccess"]) == (100, True)
        assert ok(c.get(value_path))["asOf"] == after_grant["asOf"]

        for n, tokens in enumerate((7, 5)):
            at = (now - timedelta(seconds=10 + n)).isoformat().replace("+00:00", "Z")
            body = {"specversion": "1.0", "id": f"e{n}", "source": "t", "type": "tokens", "subject": "acme",
                    "time": at, "data": {"tokens": tokens}}  # fmt: skip
            headers = {"content-type": "application/cloudevents+json"}
            ok(c.post("/api/v1/events", content=orjson.dumps(body), headers=headers), 204)
        # The embedded sink answers 204 once the batch is committed and its notification delivered.
        counted = ok(c.get(value_path))
        assert (counted["usage"], counted["balance"]) == (12, 88)
        fresh = ok(c.get(value_path, headers={"Cache-Control": "no-cache"}))
        assert fresh["asOf"] >= counted["asOf"]
        assert {k: v for k, v in fresh.items() if k != "asOf"} == {k: v for k, v in counted.items() if k != "asOf"}

        access = ok(c.get("/api/v1/subjects/acme/access"))["entitlements"]["llm"]
        assert (access["usage"], access["balance"], access["hasAccess"]) == (12, 88, True)
