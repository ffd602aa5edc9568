"""Webhooks end to end against a real `metergate dev` (system clock): HTTP ingest -> the ingest notification
stream -> evaluation -> a signed webhook at a real receiver; a grant made afterwards re-arms nothing it should
not, and the receiver verifies every delivery with `standardwebhooks`."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from tests.e2e.test_dev_server import DevServer, running_dev_server
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.e2e


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[DevServer]:
    with running_dev_server(tmp_path / "data") as server:
        yield server


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver().start()
    yield r
    r.stop()


def event(tokens: int) -> dict[str, object]:
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "specversion": "1.0",
        "id": uuid.uuid4().hex,
        "source": "e2e",
        "type": "tokens",
        "subject": "customer-1",
        "time": now,
        "data": {"tokens": tokens},
    }


async def test_ingested_usage_crossing_a_threshold_is_delivered_signed(
    dev: DevServer, receiver: WebhookReceiver
) -> None:
    async with httpx.AsyncClient(base_url=f"{dev.base_url}/api/v1", timeout=10) as c:
        meter = {"slug": "tokens", "aggregation": "SUM", "eventType": "tokens", "valueProperty": "$.tokens"}
        assert (await c.post("/meters", json=meter)).status_code == 201
        assert (await c.post("/features", json={"key": "t", "name": "T", "meterSlug": "tokens"})).status_code == 201
        ent = {"type": "metered", "featureKey": "t", "usagePeriod": {"interval": "MONTH"}}
        assert (await c.post("/subjects/customer-1/entitlements", json=ent)).status_code == 201
        grant = {
            "amount": 100,
            "effectiveAt": datetime.now(UTC).isoformat(),
            "expiration": {"duration": "MONTH", "count": 1},
        }
        assert (await c.post("/subjects/customer-1/entitlements/t/grants", json=grant)).status_code == 201
        channel = (
            await c.post("/notification/channels", json={"type": "WEBHOOK", "name": "r", "url": receiver.url})
        ).json()
        rule = {
            "type": "entitlements.balance.threshold",
            "name": "half",
            "channels": [channel["id"]],
            "thresholds": [{"type": "USAGE_PERCENTAGE", "value": 50}],
        }
        assert (await c.post("/notification/rules", json=rule)).status_code == 201
        await asyncio.sleep(0.5)  # the rule's first evaluation: nothing used yet, nothing sent
        assert receiver.requests == []

        headers = {"content-type": "application/cloudevents+json"}
        assert (await c.post("/events", content=json.dumps(event(30)), headers=headers)).status_code == 204
        assert (await c.post("/events", content=json.dumps(event(25)), headers=headers)).status_code == 204
        got = await receiver.wait_for(1, within=15)
        assert len(got) == 1, "the crossing (55% used) was not delivered"
        Webhook(channel["signingSecret"]).verify(got[0].body, got[0].headers)
        payload = json.loads(got[0].body, parse_float=Decimal)
        assert payload["data"]["threshold"] == {"type": "USAGE_PERCENTAGE", "value": 50}
        assert payload["data"]["value"]["usage"] == 55
        # more usage above the same threshold: no second event
        assert (await c.post("/events", content=json.dumps(event(5)), headers=headers)).status_code == 204
        await asyncio.sleep(2)
        assert len(receiver.requests) == 1
        events = (await c.get("/notification/events")).json()
        assert events["totalCount"] == 1
        assert events["items"][0]["deliveryStatus"][0]["state"] == "SUCCESS"
