"""The notification API over HTTP (OpenMeter v1 shapes): channels, rules, test sends, events; clear 4xx."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from entitlements.db.migrate import upgrade_database
from entitlements.notifications.dispatcher import Dispatcher
from entitlements.notifications.http import Notifications
from entitlements.notifications.http import router as notifications_router
from entitlements.notifications.service import NotificationService
from entitlements.notifications.watcher import NotificationWatcher
from tests.support.entitlement_fakes import entitlements_app
from tests.support.entitlement_harness import Harness
from tests.support.openapi_check import validating_hook

B = "/api/v1/notification"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    upgrade_database(url)
    h = Harness(url)
    service = NotificationService(h.ents)
    dispatcher = Dispatcher(h.ents.deps)  # not started: deliveries stay in the outbox
    app = entitlements_app(h.ents)
    app.state.services.notifications = Notifications(service, NotificationWatcher(service), dispatcher)
    app.include_router(notifications_router)
    hooks = {"response": [validating_hook(app)]}  # every success body against its published schema
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test", event_hooks=hooks
    ) as c:
        yield c
    h.ents.close()


async def test_channel_lifecycle_and_secret_only_one_by_one(client: httpx.AsyncClient) -> None:
    r = await client.post(f"{B}/channels", json={"type": "WEBHOOK", "name": "ops", "url": "https://example.test/h"})
    assert r.status_code == 201, r.text
    channel = r.json()
    assert channel["signingSecret"].startswith("whsec_")
    assert channel["customHeaders"] == {}
    listed = (await client.get(f"{B}/channels")).json()
    assert listed["totalCount"] == 1
    assert "signingSecret" not in listed["items"][0]
    assert (await client.get(f"{B}/channels/{channel['id']}")).json()["signingSecret"] == channel["signingSecret"]
    r = await client.put(
        f"{B}/channels/{channel['id']}",
        json={"type": "WEBHOOK", "name": "ops2", "url": "https://example.test/h2", "disabled": True},
    )
    assert r.json()["name"] == "ops2"
    assert r.json()["signingSecret"] == channel["signingSecret"]  # kept unless a new one is given
    assert (await client.delete(f"{B}/channels/{channel['id']}")).status_code == 204
    assert (await client.get(f"{B}/channels")).json()["totalCount"] == 0
    other = await client.get(f"{B}/channels", headers={"x-namespace": "other"})
    assert other.json()["totalCount"] == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "EMAIL", "name": "x", "url": "https://a"}, "type"),
        ({"type": "WEBHOOK", "name": "x", "url": "ftp://a"}, "url"),
        ({"type": "WEBHOOK", "url": "https://a"}, "name"),
        ({"type": "WEBHOOK", "name": "x", "url": "https://a", "customHeaders": {"webhook-id": "1"}}, "customHeaders"),
        ({"type": "WEBHOOK", "name": "x", "url": "https://a", "signingSecret": "whsec_short"}, "signingSecret"),
    ],
)
async def test_bad_channels_are_400_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, object], field: str
) -> None:
    r = await client.post(f"{B}/channels", json=body)
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["field"] == field


async def test_rules_thresholds_aliases_and_test_send(client: httpx.AsyncClient) -> None:
    channel = (
        await client.post(f"{B}/channels", json={"type": "WEBHOOK", "name": "c", "url": "http://127.0.0.1:9/x"})
    ).json()
    body = {
        "type": "entitlements.balance.threshold",
        "name": "80 percent",
        "thresholds": [
            {"type": "PERCENT", "value": 80},
            {"type": "USAGE_VALUE", "value": "1000.5"},
            {"type": "BALANCE_VALUE", "value": 0},
        ],
        "channels": [channel["id"]],
        "features": ["gpt4_tokens"],
    }
    r = await client.post(f"{B}/rules", json=body)
    assert r.status_code == 201, r.text
    rule = r.json()
    assert rule["thresholds"][1] == {"type": "USAGE_VALUE", "value": 1000.5}
    assert rule["channels"] == [{"id": channel["id"], "type": "WEBHOOK", "name": "c"}]
    # a channel in use cannot be deleted
    r = await client.delete(f"{B}/channels/{channel['id']}")
    assert r.status_code == 400
    assert rule["id"] in r.json()["detail"]
    # the test send is an event with a pending delivery
    r = await client.post(f"{B}/rules/{rule['id']}/test")
    assert r.status_code == 201
    event = r.json()
    assert event["payload"]["test"] is True
    assert event["deliveryStatus"][0]["state"] == "PENDING"
    got = (await client.get(f"{B}/events/{event['id']}")).json()
    assert got["id"] == event["id"]
    listed = (await client.get(f"{B}/events", params={"rule": rule["id"], "deliveryStatusStates": "PENDING"})).json()
    assert [e["id"] for e in listed["items"]] == [event["id"]]
    assert (await client.get(f"{B}/events/nope")).status_code == 404
    assert (await client.delete(f"{B}/rules/{rule['id']}")).status_code == 204
    assert (await client.get(f"{B}/rules")).json()["totalCount"] == 0


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"type": "entitlements.nope"}, "type"),
        ({"thresholds": []}, "thresholds"),
        ({"thresholds": [{"type": "USAGE_VALUE", "value": -1}]}, "thresholds[0]"),
        ({"thresholds": [{"type": "USAGE_VALUE", "value": "1e400"}]}, "thresholds[0]"),
        ({"thresholds": [{"type": "NOPE", "value": 1}]}, "thresholds[0]"),
        ({"channels": []}, "channels"),
        ({"channels": ["01NOSUCHCHANNEL0000000000"]}, "channels"),
    ],
)
async def test_bad_rules_are_400_naming_the_field(
    client: httpx.AsyncClient, patch: dict[str, object], field: str
) -> None:
    channel = (await client.post(f"{B}/channels", json={"type": "WEBHOOK", "name": "c", "url": "http://x.test"})).json()
    body = {
        "type": "entitlements.balance.threshold",
        "name": "r",
        "thresholds": [{"type": "USAGE_VALUE", "value": 1}],
        "channels": [channel["id"]],
        **patch,
    }
    r = await client.post(f"{B}/rules", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field
