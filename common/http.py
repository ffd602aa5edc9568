"""HTTP conventions shared by every router: problem+json errors (the one status table) and the
request's namespace.

Routers declare `namespace: Namespace` as a parameter; the auth middleware (metergate.app) resolves it
from the API key (or the default namespace when auth is off) and stores it on `request.state.namespace`.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import Depends, Request
from fastapi.responses import Response

from common import exactjson
from common.errors import (
    Conflict,
    Forbidden,
    HeadersTooLarge,
    InvalidInput,
    MetergateError,
    NotFound,
    PayloadTooLarge,
    Unauthenticated,
    Unavailable,
    UnsupportedMediaType,
)

# The one table that decides status codes. Most specific first: the first isinstance match wins.
STATUS_BY_CATEGORY: tuple[tuple[type[MetergateError], int], ...] = (
    (PayloadTooLarge, 413),
    (HeadersTooLarge, 431),
    (UnsupportedMediaType, 415),
    (InvalidInput, 400),
    (Unauthenticated, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (Conflict, 409),
    (Unavailable, 503),
)

PROBLEM_JSON = "application/problem+json"


def status_for(error: MetergateError) -> int:
    for category, status in STATUS_BY_CATEGORY:
        if isinstance(error, category):
            return status
    return 500


def problem(status: int, title: str, detail: str, **extra: Any) -> Response:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    body.update({k: v for k, v in extra.items() if v is not None})
    headers = {"Retry-After": "1"} if status == 503 else None
    return Response(orjson.dumps(body, default=str), status_code=status, media_type=PROBLEM_JSON, headers=headers)


def problem_for(error: MetergateError) -> Response:
    status = status_for(error)
    extra = {k: v for k, v in error.fields.items() if isinstance(v, str | int | float | bool | list | dict)}
    return problem(status, error.title, error.message, **extra)


async def current_namespace(request: Request) -> str:
    namespace = getattr(request.state, "namespace", None)
    if not isinstance(namespace, str):
        raise Unauthenticated("no namespace resolved for this request: send Authorization: Bearer <api key>")
    return namespace


Namespace = Annotated[str, Depends(current_namespace)]


def json_response(body: Any, status: int = 200) -> Response:
    """Every route's JSON answer: exact decimals and Metergate's instants (common.exactjson.dumps)."""
    return Response(exactjson.dumps(body), status_code=status, media_type="application/json")
