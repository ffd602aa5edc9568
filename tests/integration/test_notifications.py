"""Notifications on real databases (SQLite, PostgreSQL) with a real HTTP receiver: thresholds crossed by usage,
by time and re-armed by resets; signed deliveries verified with `standardwebhooks`; retries, restarts and
two dispatchers racing for the same outbox."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from common.ingest_notifications import IngestNotification
from entitlements.db.migrate import upgrade_database
from entitlements.domain import Expiration, ExpirationDuration
from entitlements.notifications.dispatcher import DeliveryPolicy, Dispatcher
from entitlements.notifications.domain import ChannelInput, DeliveryState, RuleInput
from entitlements.notifications.service import NotificationService
from entitlements.notifications.watcher import NotificationWatcher
from entitlements.service import build_entitlements
from entitlements.service.grants import GrantInput
from tests.support.entitlement_harness import NS, T0, Harness
from tests.support.services import fresh_postgres_database
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.integration

FAST = DeliveryPolicy(
    max_attempts=4,
    first_backoff=timedelta(milliseconds=50),
    request_timeout=timedelta(seconds=1),
    lease=timedelta(seconds=2),
    poll_interval=timedelta(milliseconds=50),
)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
        upgrade_database(url)
        yield url
        return
    with fresh_postgres_database("notify_test") as url:
        upgrade_database(url)
        yield url


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver().start()
    yield r
    r.stop()


class World:
    def __init__(self, url: str) -> None:
        self.h = Harness(url)
        self.service = NotificationService(self.h.ents)
        self.dispatcher = Dispatcher(self.h.ents.deps, FAST)
        self.watcher = NotificationWatcher(self.service, on_events=self.dispatcher.wake)

    async def channel_and_rule(self, url: str, thresholds: list[dict[str, object]], **rule: object) -> tuple[str, str]:
        channel = await self.service.create_channel(
            NS, ChannelInput.parse({"type": "WEBHOOK", "name": "hook", "url": url, "customHeaders": {"x-team": "a"}})
        )
        body = {
            "type": "entitlements.balance.threshold",
            "name": "r",
            "thresholds": thresholds,
            "channels": [channel.id],
            **rule,
        }
        created = await self.service.create_rule(NS, RuleInput.parse(body))
        return channel.signing_secret, created.id

    async def evaluate(self, entitlement_id: str) -> int:
        return await self.watcher.evaluate_now(NS, entitlement_id)

    async def events(self) -> list[object]:
        return (await self.service.list_events(NS, limit=100, offset=0)).items


@pytest.fixture
async def world(db_url: str) -> AsyncIterator[World]:
    w = World(db_url)
    yield w
    await w.dispatcher.close()
    await w.watcher.close()
    w.h.ents.close()


def verify(secret: str, received: object) -> dict[str, Any]:
    """The signature checks out (standardwebhooks); the body, with its numbers read exactly."""
    Webhook(secret).verify(received.body, received.headers)  # type: ignore[attr-defined]
    payload = json.loads(received.body, parse_float=Decimal)  # type: ignore[attr-defined]
    assert isinstance(payload, dict)
    return payload


async def test_usage_crossing_is_delivered_signed_once(world: World, receiver: WebhookReceiver) -> None:
    ent = await world.h.setup(grant_amount=100, recurring=False)
    secret, rule_id = await world.channel_and_rule(
        receiver.url, [{"type": "USAGE_PERCENTAGE", "value": 50}, {"type": "USAGE_VALUE", "value": 90}]
    )
    world.h.usage.add("tokens", "acme", T0 + timedelta(minutes=1), 40)
    world.h.clock.advance_to(T0 + timedelta(hours=1))
    assert await world.evaluate(ent) == 0  # 40% used: nothing crossed
    world.h.usage.add("tokens", "acme", T0 + timedelta(minutes=2), "10.5")
    assert await world.evaluate(ent) == 1  # 50.5% used
    for _ in range(3):  # usage hovering above 50%: no more events
        assert await world.evaluate(ent) == 0
    await world.dispatcher.start()
    got = await receiver.wait_for(1)
    payload = verify(secret, got[0])
    assert got[0].headers["x-team"] == "a"
    data = payload["data"]
    assert isinstance(data, dict)
    assert data["threshold"] == {"type": "USAGE_PERCENTAGE", "value": 50}
    assert data["value"]["usage"] == Decimal("50.5")
    assert data["value"]["balance"] == Decimal("49.5")
    assert data["value"]["totalAvailableGrantAmount"] == 100
    assert payload["timestamp"].endswith("Z")
    assert data["subject"] == {"key": "acme"}
    assert got[0].headers["webhook-id"] == payload["id"]
    # a higher threshold is news
    world.h.usage.add("tokens", "acme", T0 + timedelta(minutes=3), 50)
    assert await world.evaluate(ent) == 1
    got = await receiver.wait_for(2)
    assert verify(secret, got[1])["data"]["threshold"] == {"type": "USAGE_VALUE", "value": 90}  # type: ignore[index]
    assert len(await world.events()) == 2
    listed = await world.service.list_events(NS, limit=10, offset=0, rule_ids=[rule_id])
    await asyncio.sleep(0.2)
    event = await world.service.get_event(NS, listed.items[0].id)
    assert event.deliveries[0].state is DeliveryState.SUCCESS


def subject_lookups(world: World) -> list[tuple[str, tuple[str, ...]]]:
    """(namespace, subjects) of every entitlement search by subject from now on (the watcher's lookups)."""
    service = world.h.ents.entitlements
    search = service.search
    lookups: list[tuple[str, tuple[str, ...]]] = []

    async def counting(namespace: str, **kw: Any) -> Any:
        if kw.get("subject_keys"):
            lookups.append((namespace, tuple(kw["subject_keys"])))
        return await search(namespace, **kw)

    service.search = counting  # type: ignore[method-assign]
    return lookups


async def test_ingest_bursts_cost_one_lookup_per_subject_and_none_without_threshold_rules(
    world: World, receiver: WebhookReceiver
) -> None:
    ent = await world.h.setup(grant_amount=100, recurring=False)
    await world.channel_and_rule(receiver.url, [{"type": "USAGE_VALUE", "value": 10}])
    world.h.usage.add("tokens", "acme", T0 + timedelta(minutes=1), 20)
    world.h.clock.advance_to(T0 + timedelta(hours=1))
    lookups = subject_lookups(world)
    await world.watcher.sweep()  # learns which namespaces have threshold rules
    at = T0 + timedelta(minutes=1)

    def note(namespace: str, subject: str, sequence: int) -> IngestNotification:
        return IngestNotification(namespace, subject, "tokens", at, at, at, "s", sequence)

    burst = [note(NS, "acme", i) for i in range(50)] + [note("elsewhere", f"c-{i}", 50 + i) for i in range(50)]
    world.watcher.on_ingest(burst)
    await world.watcher.start()
    await asyncio.sleep(0.1)
    await world.watcher.idle()
    assert lookups == [(NS, ("acme",))]  # 50 notes of one subject: one lookup; no rule elsewhere: none
    assert [e.payload["data"]["entitlement"]["id"] for e in await world.events()] == [ent]  # type: ignore[attr-defined]


async def test_usage_right_after_a_namespace_s_first_rule_is_followed(world: World, receiver: WebhookReceiver) -> None:
    await world.h.setup(grant_amount=100, recurring=False)
    lookups = subject_lookups(world)
    await world.watcher.sweep()  # no rule yet: the namespace's usage is not followed
    at = T0 + timedelta(minutes=1)
    world.watcher.on_ingest([IngestNotification(NS, "acme", "tokens", at, at, at, "s", 1)])
    await world.channel_and_rule(receiver.url, [{"type": "USAGE_VALUE", "value": 10}])
    world.watcher.rule_changed(NS)  # what the rule routes do: followed at once, not from the next sweep
    world.watcher.on_ingest([IngestNotification(NS, "acme", "tokens", at, at, at, "s", 2)])
    await world.watcher.start()
    await asyncio.sleep(0.1)
    await world.watcher.idle()
    assert lookups == [(NS, ("acme",))]  # the note after the rule, not the one before it


async def test_a_grant_expiring_crosses_a_balance_threshold_at_that_instant(
    world: World, receiver: WebhookReceiver
) -> None:
    ent = await world.h.setup(grant_amount=100, recurring=False)
    expiring = T0 + timedelta(days=2)
    spec = GrantInput(amount=Decimal(50), effective_at=T0, expiration=Expiration(ExpirationDuration.DAY, 2))
    await world.h.ents.grants.create(NS, "acme", "gpt", spec)
    await world.channel_and_rule(receiver.url, [{"type": "BALANCE_VALUE", "value": 120}])
    world.h.usage.add("tokens", "acme", T0 + timedelta(minutes=1), 20)
    world.h.clock.advance_to(T0 + timedelta(hours=1))
    assert await world.evaluate(ent) == 0  # balance 130
    # no new event: only time passes. The watcher scheduled the expiry instant.
    assert world.watcher.next_timer() == expiring
    world.h.clock.advance_to(expiring)
    await world.watcher.start()
    world.watcher.poke_timers()
    await asyncio.sleep(0.1)
    await world.watcher.idle()
    events = await world.events()
    assert len(events) == 1
    # 20 used burnt the sooner-expiring grant first (30 of 50 left, gone at expiry): 100 left
    assert events[0].payload["data"]["value"]["balance"] == 100  # type: ignore[attr-defined]


async def test_a_reset_rearms_thresholds_and_fires_reset_rules(world: World, receiver: WebhookReceiver) -> None:
    ent = await world.h.setup(grant_amount=100, recurring=False)
    _, _ = await world.channel_and_rule(receiver.url, [{"type": "USAGE_VALUE", "value": 10}])
    channel = (await world.service.list_channels(NS, include_deleted=False, limit=10, offset=0)).items[0]
    await world.service.create_rule(
        NS, RuleInput.parse({"type": "entitlements.reset", "name": "resets", "channels": [channel.id]})
    )
    world.h.usage.add("tokens", "acme", T0 + timedelta(minutes=1), 20)
    world.h.clock.advance_to(T0 + timedelta(hours=1))
    assert await world.evaluate(ent) == 1
    assert await world.evaluate(ent) == 0
    reset_at = T0 + timedelta(hours=1)
    reset = await world.h.ents.balances.reset(
        NS, "acme", ent, effective_at=reset_at, retain_anchor=False, preserve_overage=False
    )
    assert reset.effective_at == reset_at
    assert await world.evaluate(ent) == 1  # the reset rule fires for the stored reset ...
    assert await world.evaluate(ent) == 0  # ... once
    await world.h.grant(100, reset_at)  # a reset leaves a non-rolling grant nothing; top up the new period
    world.h.usage.add("tokens", "acme", reset_at + timedelta(minutes=1), 11)
    world.h.clock.advance_to(reset_at + timedelta(hours=1))
    assert await world.evaluate(ent) == 1  # the new period re-armed the threshold
    kinds = sorted(str(e.type.value) for e in await world.events())  # type: ignore[attr-defined]
    assert kinds == ["entitlements.balance.threshold", "entitlements.balance.threshold", "entitlements.reset"]


async def test_a_receiver_that_is_down_gets_the_event_when_back(world: World, receiver: WebhookReceiver) -> None:
    ent = await world.h.setup(grant_amount=100, recurring=False)
    secret, _ = await world.channel_and_rule(receiver.url, [{"type": "USAGE_VALUE", "value": 1}])
    receiver.fail_with = 503
    world.h.usage.add("tokens", "acme", T0 + timedelta(minutes=1), 5)
    world.h.clock.advance_to(T0 + timedelta(hours=1))
    assert await world.evaluate(ent) == 1
    await world.dispatcher.start()
    await receiver.wait_for(2)  # two failed tries
    receiver.fail_with = None
    got = await receiver.wait_for(3)
    ids = {r.headers["webhook-id"] for r in got}
    assert len(ids) == 1  # every try is the same event
    verify(secret, got[-1])
    await asyncio.sleep(0.2)
    event = (await world.events())[0]
    delivery = event.deliveries[0]  # type: ignore[attr-defined]
    assert delivery.state is DeliveryState.SUCCESS
    assert [a["success"] for a in delivery.history][-1] is True
    assert any(a["statusCode"] == 503 for a in delivery.history)


async def test_after_the_last_attempt_a_delivery_is_failed(world: World, receiver: WebhookReceiver) -> None:
    ent = await world.h.setup(grant_amount=100, recurring=False)
    await world.channel_and_rule(receiver.url, [{"type": "USAGE_VALUE", "value": 1}])
    receiver.fail_with = 500
    world.h.usage.add("tokens", "acme", T0 + timedelta(minutes=1), 5)
    world.h.clock.advance_to(T0 + timedelta(hours=1))
    await world.evaluate(ent)
    await world.dispatcher.start()
    await receiver.wait_for(FAST.max_attempts)
    await asyncio.sleep(0.5)
    assert len(receiver.requests) == FAST.max_attempts
    failed = await world.service.list_events(NS, limit=10, offset=0, delivery_states=["FAILED"])
    assert failed.total == 1
    assert len(failed.items[0].deliveries[0].history) == FAST.max_attempts


async def test_decided_before_a_crash_is_delivered_after_restart_with_the_same_id(
    db_url: str, receiver: WebhookReceiver
) -> None:
    first = World(db_url)
    ent = await first.h.setup(grant_amount=100, recurring=False)
    secret, _ = await first.channel_and_rule(receiver.url, [{"type": "USAGE_VALUE", "value": 1}])
    first.h.usage.add("tokens", "acme", T0 + timedelta(minutes=1), 5)
    first.h.clock.advance_to(T0 + timedelta(hours=1))
    assert await first.evaluate(ent) == 1
    decided = (await first.events())[0].id  # type: ignore[attr-defined]
    # The process dies with the event in the outbox: nothing was sent.
    first.h.ents.close()
    assert receiver.requests == []
    restarted = build_entitlements(db_url, meters=first.h.meters, usage=first.h.usage, clock=first.h.clock)
    dispatcher = Dispatcher(restarted.deps, FAST)
    await dispatcher.start()
    try:
        got = await receiver.wait_for(1)
        assert got[0].headers["webhook-id"] == decided
        verify(secret, got[0])
    finally:
        await dispatcher.close()
        restarted.close()


async def test_sent_but_not_marked_is_sent_again_with_the_same_id(world: World, receiver: WebhookReceiver) -> None:
    ent = await world.h.setup(grant_amount=100, recurring=False)
    await world.channel_and_rule(receiver.url, [{"type": "USAGE_VALUE", "value": 1}])
    world.h.usage.add("tokens", "acme", T0 + timedelta(minutes=1), 5)
    world.h.clock.advance_to(T0 + timedelta(hours=1))
    await world.evaluate(ent)
    # A dispatcher claims the delivery and dies before marking it (its lease is never released).
    deps = world.h.ents.deps
    from entitlements.notifications.repository import NotificationRepository

    now = deps.wall_clock.now()
    with deps.db.write() as session:
        claimed = NotificationRepository(session).claim_due(now, now + FAST.lease, 10, lock_rows=deps.db.locks_rows)
    assert len(claimed) == 1
    await world.dispatcher.start()
    got = await receiver.wait_for(1, within=5)
    assert got[0].headers["webhook-id"] == (await world.events())[0].id  # type: ignore[attr-defined]
    await asyncio.sleep(0.3)
    assert len(receiver.requests) == 1


async def test_two_dispatchers_deliver_each_event_once(db_url: str, receiver: WebhookReceiver) -> None:
    w = World(db_url)
    ents = []
    ent = await w.h.setup(grant_amount=100, recurring=False)
    ents.append(ent)
    await w.channel_and_rule(receiver.url, [{"type": "USAGE_VALUE", "value": v} for v in range(1, 10)])
    for n in range(1, 10):
        w.h.usage.add("tokens", "acme", T0 + timedelta(minutes=n), 1.5)
        w.h.clock.advance_to(T0 + timedelta(hours=n))
        await w.evaluate(ent)
    count = len(await w.events())
    assert count >= 5
    other = Dispatcher(w.h.ents.deps, FAST)
    await asyncio.gather(w.dispatcher.start(), other.start())
    try:
        await receiver.wait_for(count)
        await asyncio.sleep(0.5)
        ids = [r.headers["webhook-id"] for r in receiver.requests]
        assert sorted(ids) == sorted(set(ids))
        assert len(ids) == count
    finally:
        await other.close()
        await w.dispatcher.close()
        w.h.ents.close()


def test_signing_secret_is_verifiable_and_payload_is_json() -> None:
    from entitlements.notifications.dispatcher import signed_headers
    from entitlements.notifications.domain import new_signing_secret

    secret = new_signing_secret()
    body = orjson.dumps({"id": "e1", "a": "1.50"}).decode()
    headers = signed_headers("e1", secret, body, T0.replace(year=2026))
    with pytest.raises(Exception, match=r"(?i)timestamp|too old"):
        Webhook(secret).verify(body, headers)  # an old timestamp is refused by receivers
