"""The FastAPI application: routers, authentication, the body size limit and problem+json errors.

`create_app(services, auth)` takes an already built Services container (see metergate/wiring.py), so
the CLI and the tests assemble the app the same way. Routers are listed once, in `ROUTERS`.

Authentication: every /api/ request acts in exactly one namespace, resolved here from
`Authorization: Bearer <api key>` and stored on the request (routers read it with `namespace:
Namespace`). Missing or unknown key: 401. With auth off (allowed only on a loopback address, see
`check_auth_binding`), every request acts in the default namespace.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote_to_bytes

import orjson
import structlog
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aggregator.http import router as meters_router
from common.errors import HeadersTooLarge, InvalidInput, MetergateError, PayloadTooLarge, Unauthenticated, Unavailable
from common.http import PROBLEM_JSON, problem, problem_for
from common.settings import AuthSettings
from entitlements.access_http import router as access_router
from entitlements.customers_http import router as customers_router
from entitlements.http import router as entitlements_router
from entitlements.notifications.http import router as notifications_router
from ingest.http import router as events_router
from metergate.clock_http import router as clock_router
from metergate.wiring import Services

log = structlog.get_logger(__name__)

# Every router of the API, in one place. Meters and entitlements add theirs here.
ROUTERS: tuple[APIRouter, ...] = (
    events_router,
    clock_router,
    meters_router,
    entitlements_router,
    access_router,
    customers_router,
    notifications_router,
)

PROTECTED_PREFIX = "/api/"


class ConfigError(Exception):
    """Settings that validate field by field but make no sense together."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_auth_binding(auth: AuthSettings, host: str) -> None:
    """Refuse the two unsafe combinations: auth off on a reachable address, auth on with no keys."""
    if not auth.enabled and not is_loopback(host):
        raise ConfigError(
            f"auth is off but the API would listen on {host}: auth may be off only on a loopback "
            'address such as 127.0.0.1; configure METERGATE_AUTH__API_KEYS=\'{"<key>": "<namespace>"}\' '
            "(at least 16 characters per key) to listen elsewhere"
        )
    if auth.enabled and not auth.api_keys:
        raise ConfigError(
            'auth is on but no API keys are configured: set METERGATE_AUTH__API_KEYS=\'{"<key>": "<namespace>"}\''
        )


def check_frozen_clock(frozen: bool, auth: AuthSettings, host: str, *, allowed: bool) -> None:
    """A frozen test clock is one clock for every namespace: any tenant that may move it moves it for all.
    It is refused where tenants could reach it (auth on and a non-loopback address) unless explicitly allowed."""
    if frozen and auth.enabled and not is_loopback(host) and not allowed:
        raise ConfigError(
            f"METERGATE_CLOCK_FROZEN_AT is a test-only setting, and the API would listen on {host} with auth on, "
            "where any tenant could move the clock for every tenant: unset it, listen on a loopback address, or "
            "set METERGATE_ALLOW_FROZEN_CLOCK=true to accept that"
        )


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def _problem_bytes(error: MetergateError) -> tuple[int, bytes]:
    response = problem_for(error)
    return response.status_code, bytes(response.body)


async def _send_problem(send: Send, error: MetergateError, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    status, body = _problem_bytes(error)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class AuthMiddleware:
    """Resolves the namespace of every /api/ request; 401 without a valid key.

    Keys are looked up by their SHA-256, so the comparison does not leak a key's prefix through timing.
    """

    def __init__(self, app: ASGIApp, *, api_keys: Mapping[str, str] | None, default_namespace: str) -> None:
        self.app = app
        self._by_digest = None if api_keys is None else {_digest(k.encode()): ns for k, ns in api_keys.items()}
        self._default = default_namespace

    def namespace_for(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        if self._by_digest is None:
            return self._default
        for name, value in headers:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() != b"bearer" or not token.strip():
                    return None
                return self._by_digest.get(_digest(token.strip()))
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        namespace = self.namespace_for(scope["headers"])
        if namespace is None:
            await _send_problem(
                send,
                Unauthenticated("a valid API key is required: send Authorization: Bearer <api key>"),
                [(b"www-authenticate", b"Bearer")],
            )
            return
        scope.setdefault("state", {})["namespace"] = namespace
        structlog.contextvars.bind_contextvars(namespace=namespace)
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Reads the request body up front, stopping with 413 as soon as it passes the limit.

    The count is of bytes actually received, not of what Content-Length claims (a larger declared
    length is refused early). The app then reads the buffered body, so a 413 never reaches a route
    half-way through parsing.
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.limit = max_body_bytes

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body is larger than {self.limit} bytes", limit=self.limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await _send_problem(send, self._too_large(), [(b"connection", b"close")])
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await _send_problem(send, self._too_large(), [(b"connection", b"close")])
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


MAX_PATH_SEGMENT = 1024


class InputHygieneMiddleware:
    """Refuses, with a 400 before any route runs, what no route can store faithfully: a URL path or query
    with a NUL byte or bytes that are not UTF-8 (decoded leniently they would become U+FFFD, so the stored
    subject would differ from the one sent), or a path segment longer than the longest identifier
    (1024 characters: subjects)."""

    def __init__(self, app: ASGIApp, *, max_header_bytes: int = 16 * 1024) -> None:
        self.app = app
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = sum(len(name) + len(value) + 4 for name, value in scope.get("headers", ()))
            if size > self.max_header_bytes:
                error = HeadersTooLarge(f"request headers are larger than {self.max_header_bytes} bytes")
                await _send_problem(send, error, [(b"connection", b"close")])
                return
            problem = self._problem(scope)
            if problem is not None:
                await _send_problem(send, InvalidInput(problem), [])
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _problem(scope: Scope) -> str | None:
        raw_path = scope.get("raw_path") or str(scope.get("path", "")).encode()
        for where, raw in (("path", raw_path), ("query", scope.get("query_string") or b"")):
            decoded = unquote_to_bytes(raw.replace(b"+", b" ") if where == "query" else raw)
            if b"\x00" in decoded:
                return f"the URL {where} contains a NUL character"
            try:
                text = decoded.decode("utf-8")
            except UnicodeDecodeError:
                return f"the URL {where} is not UTF-8 once percent-decoded"
            if where == "path" and any(len(segment) > MAX_PATH_SEGMENT for segment in text.split("/")):
                return f"a URL path segment is longer than {MAX_PATH_SEGMENT} characters"
        return None


def _jsonable_errors(errors: Any) -> list[dict[str, Any]]:
    return [
        {"loc": [str(part) for part in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in errors
    ]


async def _metergate_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, MetergateError)
    if isinstance(exc, Unavailable):
        log.warning("dependency_unavailable", path=request.url.path, error=exc.message)
    return problem_for(exc)


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = _jsonable_errors(exc.errors())
    where = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors)
    return problem(400, "Bad Request", f"invalid request: {where}", errors=errors)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    title = HTTPStatus(exc.status_code).phrase
    detail = exc.detail if isinstance(exc.detail, str) else title
    if exc.status_code == 404:
        detail = f"no route for {request.method} {request.url.path}"
    return problem(exc.status_code, title, detail)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled_error", path=request.url.path, error_type=type(exc).__name__)
    return problem(500, "Internal Server Error", "an unexpected error occurred; see the server log")


def create_app(services: Services, auth: AuthSettings, *, max_header_bytes: int = 16 * 1024) -> FastAPI:
    app = FastAPI(
        title="Metergate",
        version="0.1.0",
        description="Usage metering and entitlements, OpenMeter v1 compatible.",
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.services = services
    for router in ROUTERS:
        app.include_router(router)

    @app.get("/", include_in_schema=False)
    async def root() -> Response:
        return RedirectResponse("/docs")

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return Response(orjson.dumps({"status": "ok"}), media_type="application/json")

    app.add_exception_handler(MetergateError, _metergate_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    # Added last = outermost: authenticate before reading any body.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=services.max_body_bytes)
    app.add_middleware(InputHygieneMiddleware, max_header_bytes=max_header_bytes)
    app.add_middleware(
        AuthMiddleware,
        api_keys=auth.api_keys if auth.enabled else None,
        default_namespace=auth.default_namespace,
    )
    return app


__all__ = [
    "ROUTERS",
    "AuthMiddleware",
    "BodyLimitMiddleware",
    "ConfigError",
    "check_auth_binding",
    "check_frozen_clock",
    "create_app",
]
