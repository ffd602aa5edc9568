"""OpenMeter v1 notification API: channels, rules (with a test send) and events with their deliveries.

Lists are OpenMeter's paged shape `{items, page, pageSize, totalCount}`. A channel's signing secret is shown
when it is created or read one by one, never in lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response

from common import http
from common.cloudevents import parse_time
from common.errors import Unavailable
from common.http import Namespace
from entitlements.notifications.dispatcher import Dispatcher
from entitlements.notifications.domain import ChannelInput, DeliveryState, Event, RuleInput
from entitlements.notifications.service import NotificationService, Page
from entitlements.notifications.watcher import NotificationWatcher
from entitlements.openapi import CHANNEL, NOTIFICATION_EVENT, RULE, ok, page
from entitlements.schemas import decode_body

MAX_PAGE_SIZE = 1000


@dataclass
class Notifications:
    """What the routes need: the service, the evaluation watcher and the outbox dispatcher."""

    service: NotificationService
    watcher: NotificationWatcher
    dispatcher: Dispatcher


async def notifications_of(request: Request) -> Notifications:
    found = getattr(getattr(request.app.state, "services", None), "notifications", None)
    if not isinstance(found, Notifications):
        raise Unavailable("notifications are not configured in this process")
    return found


Notes = Annotated[Notifications, Depends(notifications_of)]
PageNo = Annotated[int, Query(ge=1, le=100_000)]
PageSize = Annotated[int, Query(alias="pageSize", ge=1, le=MAX_PAGE_SIZE)]
ChannelId = Annotated[str, Path(alias="channelId", max_length=64)]
RuleId = Annotated[str, Path(alias="ruleId", max_length=64)]
EventId = Annotated[str, Path(alias="eventId", max_length=64)]

router = APIRouter(prefix="/api/v1/notification", tags=["notifications"])


json_response = http.json_response  # the one JSON answer (common.http)


def paged(page: Page, page_no: int, page_size: int, render: Any) -> Response:
    return json_response(
        {"items": [render(i) for i in page.items], "page": page_no, "pageSize": page_size, "totalCount": page.total}
    )


# ---- channels ----


@router.get("/channels", responses=ok(page(CHANNEL)))
async def list_channels(
    namespace: Namespace,
    notes: Notes,
    include_deleted: Annotated[bool, Query(alias="includeDeleted")] = False,
    page: PageNo = 1,
    page_size: PageSize = 100,
) -> Response:
    """Webhook channels of the namespace (secrets omitted)."""
    found = await notes.service.list_channels(
        namespace, include_deleted=include_deleted, limit=page_size, offset=(page - 1) * page_size
    )
    return paged(found, page, page_size, lambda c: c.to_api(with_secret=False))


@router.post("/channels", status_code=201, responses=ok(CHANNEL, 201))
async def create_channel(request: Request, namespace: Namespace, notes: Notes) -> Response:
    """A webhook channel: `{type: "WEBHOOK", name, url, customHeaders?, signingSecret?, disabled?}`.
    A signing secret is generated (`whsec_...`) when none is given."""
    spec = ChannelInput.parse(decode_body(await request.body()))
    channel = await notes.service.create_channel(namespace, spec)
    return json_response(channel.to_api(with_secret=True), 201)


@router.get("/channels/{channelId}", responses=ok(CHANNEL))
async def get_channel(namespace: Namespace, notes: Notes, channel_id: ChannelId) -> Response:
    channel = await notes.service.get_channel(namespace, channel_id)
    return json_response(channel.to_api(with_secret=True))


@router.put("/channels/{channelId}", responses=ok(CHANNEL))
async def update_channel(request: Request, namespace: Namespace, notes: Notes, channel_id: ChannelId) -> Response:
    """Replace a channel's settings; the secret is kept unless a new one is given."""
    spec = ChannelInput.parse(decode_body(await request.body()))
    channel = await notes.service.update_channel(namespace, channel_id, spec)
    return json_response(channel.to_api(with_secret=True))


@router.delete("/channels/{channelId}", status_code=204)
async def delete_channel(namespace: Namespace, notes: Notes, channel_id: ChannelId) -> Response:
    """Delete a channel no rule uses (400 names the rules that still use it)."""
    await notes.service.delete_channel(namespace, channel_id)
    return Response(status_code=204)


# ---- rules ----


async def _rule_api(notes: Notifications, namespace: str, rules: list[Any]) -> list[dict[str, Any]]:
    ids = sorted({c for r in rules for c in r.channels})
    channels = await notes.service.channels_by_id(namespace, ids)
    return [r.to_api(channels) for r in rules]


@router.get("/rules", responses=ok(page(RULE)))
async def list_rules(
    namespace: Namespace,
    notes: Notes,
    include_disabled: Annotated[bool, Query(alias="includeDisabled")] = True,
    include_deleted: Annotated[bool, Query(alias="includeDeleted")] = False,
    page: PageNo = 1,
    page_size: PageSize = 100,
) -> Response:
    found = await notes.service.list_rules(
        namespace,
        include_disabled=include_disabled,
        include_deleted=include_deleted,
        limit=page_size,
        offset=(page - 1) * page_size,
    )
    items = await _rule_api(notes, namespace, found.items)
    return json_response({"items": items, "page": page, "pageSize": page_size, "totalCount": found.total})


@router.post("/rules", status_code=201, responses=ok(RULE, 201))
async def create_rule(request: Request, namespace: Namespace, notes: Notes) -> Response:
    """`{type: "entitlements.balance.threshold", name, thresholds: [{type, value}], features?, channels}` or
    `{type: "entitlements.reset", name, features?, channels}`. Threshold types: USAGE_VALUE, USAGE_PERCENTAGE,
    BALANCE_VALUE (NUMBER and PERCENT are accepted as the deprecated aliases)."""
    spec = RuleInput.parse(decode_body(await request.body()))
    rule = await notes.service.create_rule(namespace, spec)
    notes.watcher.rule_changed(namespace)
    return json_response((await _rule_api(notes, namespace, [rule]))[0], 201)


@router.get("/rules/{ruleId}", responses=ok(RULE))
async def get_rule(namespace: Namespace, notes: Notes, rule_id: RuleId) -> Response:
    rule = await notes.service.get_rule(namespace, rule_id)
    return json_response((await _rule_api(notes, namespace, [rule]))[0])


@router.put("/rules/{ruleId}", responses=ok(RULE))
async def update_rule(request: Request, namespace: Namespace, notes: Notes, rule_id: RuleId) -> Response:
    spec = RuleInput.parse(decode_body(await request.body()))
    rule = await notes.service.update_rule(namespace, rule_id, spec)
    notes.watcher.rule_changed(namespace)
    return json_response((await _rule_api(notes, namespace, [rule]))[0])


@router.delete("/rules/{ruleId}", status_code=204)
async def delete_rule(namespace: Namespace, notes: Notes, rule_id: RuleId) -> Response:
    await notes.service.delete_rule(namespace, rule_id)
    return Response(status_code=204)


@router.post("/rules/{ruleId}/test", status_code=201, responses=ok(NOTIFICATION_EVENT, 201))
async def test_rule(namespace: Namespace, notes: Notes, rule_id: RuleId) -> Response:
    """Send a test event through the rule's channels (payload `test: true`); returns the event."""
    event = await notes.service.send_test(namespace, rule_id)
    notes.dispatcher.wake()
    return json_response(event_api(event, with_attempts=True), 201)


# ---- events ----


def event_api(event: Event, *, with_attempts: bool) -> dict[str, Any]:
    deliveries = []
    for d in event.deliveries:
        last = d.history[-1] if d.history else None
        item: dict[str, Any] = {
            "channel": {"id": d.channel_id, "type": "WEBHOOK"},
            "state": d.state.value,
            "reason": (last or {}).get("reason") or "",
            "updatedAt": d.updated_at,
            "attempts": d.attempts,
        }
        if d.state is DeliveryState.PENDING and d.attempts:
            item["nextAttemptAt"] = d.next_attempt_at
        if with_attempts:
            item["history"] = list(d.history)
        deliveries.append(item)
    return {
        "id": event.id,
        "type": event.type.value,
        "createdAt": event.created_at,
        "rule": {"id": event.rule_id},
        "deliveryStatus": deliveries,
        "payload": event.payload,
    }


def _time(value: str | None, name: str) -> datetime | None:
    return None if value is None else parse_time(value, field=name)


@router.get("/events", responses=ok(page(NOTIFICATION_EVENT)))
async def list_events(
    namespace: Namespace,
    notes: Notes,
    rule: Annotated[list[str] | None, Query()] = None,
    feature: Annotated[list[str] | None, Query()] = None,
    subject: Annotated[list[str] | None, Query()] = None,
    since: Annotated[str | None, Query(alias="from")] = None,
    until: Annotated[str | None, Query(alias="to")] = None,
    delivery_status: Annotated[list[DeliveryState] | None, Query(alias="deliveryStatusStates")] = None,
    page: PageNo = 1,
    page_size: PageSize = 100,
) -> Response:
    """Events, newest first; filter by rule, feature key, subject key, creation time, delivery state."""
    found = await notes.service.list_events(
        namespace,
        rule_ids=rule or (),
        feature_keys=feature or (),
        subject_keys=subject or (),
        since=_time(since, "from"),
        until=_time(until, "to"),
        delivery_states=[s.value for s in delivery_status or ()],
        limit=page_size,
        offset=(page - 1) * page_size,
    )
    return paged(found, page, page_size, lambda e: event_api(e, with_attempts=False))


@router.get("/events/{eventId}", responses=ok(NOTIFICATION_EVENT))
async def get_event(namespace: Namespace, notes: Notes, event_id: EventId) -> Response:
    """One event with every delivery attempt and its outcome."""
    return json_response(event_api(await notes.service.get_event(namespace, event_id), with_attempts=True))
