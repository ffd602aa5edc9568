"""HTTP ingest, OpenMeter v1 compatible: POST /api/v1/events and GET /api/v1/events.

The POST path is kept lean on purpose (it must carry >= 20k events/s on one core): the body is read
once (the app's middleware enforces the size limit while it streams in), decoded and validated in one
pass by the compiled CloudEvent schema (common.cloudevents, the sink's too; no pydantic per event), and
handed to the publisher in one call. A body the schema does not pass at first sight is decoded again and
checked event by event, which names the first bad event and field. A batch is all or nothing: the first
invalid event rejects the request before anything is published.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Protocol

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from common.clock import Clock, format_time
from common.cloudevents import (
    CloudEvent,
    EventValidationError,
    decode_events,
    decode_json,
    parse_time,
    validate_batch,
)
from common.errors import InvalidInput, UnsupportedMediaType
from common.http import Namespace
from common.openapi import INSTANT, STRING, obj, ok
from ingest.events_reader import DEFAULT_LIMIT, MAX_LIMIT, ClickHouseEventsReader, EventFilter, StoredEvent
from ingest.publisher import EventPublisher


class EventValidationHook(Protocol):
    """Why a stored event does not count for some meter (e.g. a missing valueProperty), or None."""

    def __call__(self, namespace: str, event: CloudEvent) -> str | None: ...


class IngestServices(Protocol):
    """What these routes need of the app's services (metergate.wiring.Services provides it)."""

    @property
    def clock(self) -> Clock: ...

    @property
    def publisher(self) -> EventPublisher: ...

    @property
    def events_reader(self) -> ClickHouseEventsReader: ...

    @property
    def event_validation(self) -> EventValidationHook | None: ...


async def ingest_services(request: Request) -> IngestServices:
    """The app's services (`app.state.services`, built by the composition root)."""
    services: IngestServices = request.app.state.services
    return services


Ingest = Annotated[IngestServices, Depends(ingest_services)]

router = APIRouter(tags=["events"])

SINGLE = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
JSON = "application/json"
ACCEPTED_CONTENT_TYPES = (SINGLE, BATCH, JSON)


class InvalidEvent(InvalidInput):
    """An event of the request is invalid; names its index (None for a single event) and field."""


def media_type(content_type: str | None) -> str:
    """The bare media type, lower-case, without parameters such as charset."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def events_of(kind: str, document: Any) -> list[Any]:
    """The list of raw events a document holds, per its content type."""
    if kind == SINGLE:
        if isinstance(document, list):
            raise InvalidInput(f"{SINGLE} carries one event: send a batch as {BATCH}")
        return [document]
    if kind == BATCH:
        if not isinstance(document, list):
            raise InvalidInput(f"{BATCH} carries a JSON array of events")
        values = document
    else:
        values = document if isinstance(document, list) else [document]
    if not values:
        raise InvalidInput("the batch is empty: send at least one event")
    return values


def _invalid(exc: EventValidationError, *, batch: bool) -> InvalidEvent:
    where = f"event {exc.index}" if batch and exc.index is not None else "event"
    field = f" field {exc.field}" if exc.field else ""
    return InvalidEvent(
        f"{where}{field}: {exc.message}",
        index=exc.index if batch else None,
        field=exc.field,
        pointer=exc.pointer if batch else (f".{exc.field}" if exc.field else "$"),
    )


_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["specversion", "id", "source", "type", "subject"],
    "properties": {
        "specversion": {"type": "string", "enum": ["1.0"]},
        "id": {"type": "string", "minLength": 1},
        "source": {"type": "string", "minLength": 1},
        "type": {"type": "string", "minLength": 1},
        "subject": {"type": "string", "minLength": 1},
        "time": {"type": "string", "format": "date-time", "description": "defaults to the time of receipt"},
        "datacontenttype": {"type": "string", "enum": ["application/json"]},
        "data": {"type": ["object", "null"]},
    },
    "example": {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "demo",
        "type": "tokens",
        "subject": "customer-1",
        "time": "2025-01-01T12:00:00.123Z",
        "data": {"tokens": 42},
    },
}
_BATCH_SCHEMA: dict[str, Any] = {"type": "array", "minItems": 1, "items": _EVENT_SCHEMA}
# The body is parsed by hand (orjson + the pure validator), so describe it for /docs explicitly.
_INGEST_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            SINGLE: {"schema": _EVENT_SCHEMA},
            BATCH: {"schema": _BATCH_SCHEMA},
            JSON: {"schema": {"oneOf": [_EVENT_SCHEMA, _BATCH_SCHEMA]}},
        },
    }
}


@router.post(
    "/api/v1/events",
    status_code=204,
    response_class=Response,
    summary="Ingest CloudEvents (one, or a batch validated as a whole)",
    openapi_extra=_INGEST_OPENAPI,
)
async def ingest_events(request: Request, namespace: Namespace, services: Ingest) -> Response:
    kind = media_type(request.headers.get("content-type"))
    if kind not in ACCEPTED_CONTENT_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type must be one of {', '.join(ACCEPTED_CONTENT_TYPES)}", content_type=kind or None
        )
    # The size limit was enforced while the body streamed in (metergate.app.BodyLimitMiddleware).
    body = await request.body()
    received_at = services.clock.now()
    events = events_from_body(kind, body, received_at)
    await services.publisher.publish(namespace, events, received_at)
    return Response(status_code=204)


def events_from_body(kind: str, body: bytes, received_at: datetime) -> list[CloudEvent]:
    """The events of a request body of media type `kind`; InvalidInput saying what to fix otherwise."""
    events = decode_events(body, default_time=received_at, single=kind == SINGLE if kind != JSON else None)
    if events is not None:
        return events
    document = decode_json(body)
    values = events_of(kind, document)
    try:
        return validate_batch(values, default_time=received_at)
    except EventValidationError as exc:
        raise _invalid(exc, batch=kind == BATCH or isinstance(document, list)) from None


def _time_param(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time(value, field=name)
    except EventValidationError as exc:
        raise InvalidInput(exc.message, parameter=name) from None


def ingested_event_json(services: IngestServices, namespace: str, stored: StoredEvent) -> dict[str, Any]:
    """OpenMeter's IngestedEvent."""
    hook = services.event_validation
    return {
        "event": stored.event.to_json_dict(),
        "ingestedAt": format_time(stored.ingested_at),
        "storedAt": format_time(stored.stored_at),
        "validationError": hook(namespace, stored.event) if hook is not None else None,
    }


STORED_EVENT = obj(
    ["event", "ingestedAt", "storedAt", "validationError"],
    event=obj(
        ["specversion", "id", "source", "type", "subject"],
        specversion=STRING,
        id=STRING,
        source=STRING,
        type=STRING,
        subject=STRING,
        time=INSTANT,
    ),
    ingestedAt=INSTANT,
    storedAt=INSTANT,
    validationError={"type": ["string", "null"]},
)


@router.get(
    "/api/v1/events",
    summary="List stored events, newest first (for debugging)",
    responses=ok({"type": "array", "items": STORED_EVENT}),
)
async def list_events(
    namespace: Namespace,
    services: Ingest,
    from_: Annotated[str | None, Query(alias="from", description="RFC 3339; events with time >= from")] = None,
    to: Annotated[str | None, Query(description="RFC 3339; events with time < to")] = None,
    subject: Annotated[str | None, Query(min_length=1)] = None,
    type_: Annotated[str | None, Query(alias="type", min_length=1)] = None,
    id_: Annotated[str | None, Query(alias="id", min_length=1)] = None,
    ingested_at_from: Annotated[str | None, Query(alias="ingestedAtFrom", description="RFC 3339")] = None,
    ingested_at_to: Annotated[str | None, Query(alias="ingestedAtTo", description="RFC 3339")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Response:
    start, end = _time_param(from_, "from"), _time_param(to, "to")
    if start is not None and end is not None and start >= end:
        raise InvalidInput("from must be before to", parameter="from")
    ingested_from = _time_param(ingested_at_from, "ingestedAtFrom")
    ingested_to = _time_param(ingested_at_to, "ingestedAtTo")
    stored = await services.events_reader.list_events(
        namespace,
        EventFilter(
            start=start,
            end=end,
            subject=subject,
            type=type_,
            id=id_,
            ingested_from=ingested_from,
            ingested_to=ingested_to,
            limit=limit,
        ),
    )
    body = [ingested_event_json(services, namespace, s) for s in stored]
    return Response(orjson.dumps(body), media_type="application/json")
