"""The HTTP server (uvicorn on the httptools parser) and its defences against slow and greedy clients,
configured from ServerSettings.

httptools is llhttp, the C parser Node.js uses: against uvicorn's pure-Python h11 it serves `/healthz` and
cached entitlement checks 1.29-1.36x the requests per second at 16 connections (`bench/gateway.py`, side by
side), which is what a gateway calling the value endpoint inline pays for.

uvicorn bounds idle keep-alive connections and concurrent connections, but not how long a client may take
to send its headers or body, nor (on httptools) how many header bytes it may send: a client sending one
header byte every few seconds holds a connection (and with many such clients, every connection) forever,
and one sending an endless header grows the parser's buffer without end. `GuardedHttpToolsProtocol`
closes a connection whose request headers are not complete within `header_timeout` of their first byte (or
of the connection), or whose body is not complete within `body_timeout` of its headers, and answers 431
(then closes) once the request line and headers pass `max_incomplete_header_bytes` (twice
`max_header_bytes`) before they are complete. Headers that arrive complete are measured by the app
(`InputHygieneMiddleware`, 431 past `max_header_bytes`): the protocol's bound only keeps the parser's buffer
finite meanwhile, and its 431 names the bound that was passed. Normal requests never notice: a request that
arrives whole arms no timer at all.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import structlog
from pydantic import BaseModel, Field
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from common.errors import HeadersTooLarge
from common.http import PROBLEM_JSON, problem_for

log = structlog.get_logger(__name__)

Phase = Literal["idle", "headers", "body", "app"]
_BEFORE_BODY = frozenset({"idle", "headers"})


class ServerSettings(BaseModel):
    header_timeout_seconds: float = Field(default=10, gt=0, le=300, description="to receive a request's headers")
    body_timeout_seconds: float = Field(default=30, gt=0, le=3600, description="to receive a request's body")
    keep_alive_seconds: float = Field(default=5, gt=0, le=600, description="an idle keep-alive connection is closed")
    max_connections: int = Field(default=1000, ge=1, description="concurrent connections (503 past it)")
    max_header_bytes: int = Field(default=16 * 1024, ge=1024, le=1024 * 1024, description="request line + headers")


def headers_too_large_response(limit: int) -> bytes:
    """The 431 the app sends for headers past the limit, as bytes for the transport, closing the connection."""
    response = problem_for(HeadersTooLarge(f"request headers are larger than {limit} bytes"))
    body = bytes(response.body)
    head = (
        f"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: {PROBLEM_JSON}\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_incomplete_header_bytes: int = 32 * 1024

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: Phase = "idle"
        self._waiting_for: Phase | None = None
        self._header_bytes = 0
        self._arm(self.header_timeout, "headers")

    def _arm(self, seconds: float, what: Phase) -> None:
        self._disarm()
        self._waiting_for = what
        self._deadline = self.loop.call_later(seconds, self._expire, what)

    def _disarm(self) -> None:
        deadline = getattr(self, "_deadline", None)
        self._waiting_for = None
        if deadline is not None:
            deadline.cancel()
            self._deadline = None

    def _expire(self, what: str) -> None:
        self._deadline = None
        self._waiting_for = None
        log.warning("slow_client_closed", waiting_for=what, client=str(self.client))
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # the parser's callbacks (called from feed_data) move the phase; data_received acts on where it ends
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = "headers"

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._phase = "body"
        self._header_bytes = 0

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._phase = "app"

    def data_received(self, data: bytes) -> None:
        if self._phase in _BEFORE_BODY:
            self._header_bytes += len(data)
        super().data_received(data)
        phase = self._phase
        if phase == "headers" or (phase == "idle" and data and self.parser is not None):
            if self._header_bytes > self.max_incomplete_header_bytes:
                self._refuse_headers()
            elif self._waiting_for != "headers":
                self._arm(self.header_timeout, "headers")
        elif phase == "body":
            if self._waiting_for != "body":
                self._arm(self.body_timeout, "body")
        elif self._deadline is not None:  # the request is complete: the app's own time is not bounded here
            self._disarm()

    def _refuse_headers(self) -> None:
        self._disarm()
        log.warning("oversized_headers_refused", client=str(self.client), bytes=self._header_bytes)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(headers_too_large_response(self.max_incomplete_header_bytes))
            self.transport.close()

    def on_response_complete(self) -> None:
        self._phase = "idle"
        self._header_bytes = 0
        self._disarm()  # idle from here on: uvicorn's keep-alive timer applies
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def protocol_class(settings: ServerSettings) -> type[GuardedHttpToolsProtocol]:
    return type(
        "ConfiguredHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "header_timeout": settings.header_timeout_seconds,
            "body_timeout": settings.body_timeout_seconds,
            # headers that arrive whole are measured by the app; this bounds the parser's buffer meanwhile
            "max_incomplete_header_bytes": 2 * settings.max_header_bytes,
        },
    )


def uvicorn_options(settings: ServerSettings) -> dict[str, Any]:
    return {
        "http": protocol_class(settings),
        "timeout_keep_alive": settings.keep_alive_seconds,
        "limit_concurrency": settings.max_connections,
    }
