"""The test clock over HTTP: replay months of usage in seconds (like Stripe's test clocks).

GET /api/v1/debug/clock returns the service's now. POST {"time": "<RFC 3339>"} moves a frozen clock
forward (set METERGATE_CLOCK_FROZEN_AT to freeze it at start); 409 when the clock is not frozen, 400
when the time is before the clock's now.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from common.clock import FrozenClock, format_time
from common.cloudevents import EventValidationError, decode_json, parse_time
from common.errors import Conflict, InvalidInput
from common.http import current_namespace
from metergate.wiring import services_of

# Authenticated like every /api/ route, but the clock is the service's, not a namespace's.
router = APIRouter(tags=["debug"], dependencies=[Depends(current_namespace)])


def _clock_json(now_text: str, *, frozen: bool) -> Response:
    return Response(orjson.dumps({"now": now_text, "frozen": frozen}), media_type="application/json")


@router.get("/api/v1/debug/clock", summary="The service clock")
async def get_clock(request: Request) -> Response:
    clock = services_of(request).clock
    return _clock_json(format_time(clock.now()), frozen=isinstance(clock, FrozenClock))


@router.post("/api/v1/debug/clock", summary="Move the frozen test clock forward")
async def move_clock(request: Request) -> Response:
    clock = services_of(request).clock
    if not isinstance(clock, FrozenClock):
        raise Conflict("the clock is not frozen: start Metergate with METERGATE_CLOCK_FROZEN_AT=<RFC 3339> to use it")
    body: Any = decode_json(await request.body())
    if not isinstance(body, dict) or "time" not in body:
        raise InvalidInput('send {"time": "<RFC 3339 date-time>"}')
    try:
        target = parse_time(body["time"])
        now = clock.advance_to(target)
    except EventValidationError as exc:
        raise InvalidInput(exc.message, field="time") from None
    except ValueError as exc:
        raise InvalidInput(str(exc), field="time") from None
    return _clock_json(format_time(now), frozen=True)
