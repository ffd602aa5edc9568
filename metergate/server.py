"""The HTTP server's defences against slow and greedy clients (uvicorn + h11, configured from ServerSettings).

uvicorn bounds idle keep-alive connections, concurrent connections and header size, but not how long a client
may take to send its headers or body: a client sending one header byte every few seconds holds a connection
(and with many such clients, every connection) forever. `GuardedH11Protocol` closes a connection whose
request headers are not complete within `header_timeout` of their first byte (or of the connection), or
whose body is not complete within `body_timeout` of its headers. Normal requests never notice.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import structlog
from pydantic import BaseModel, Field
from uvicorn.protocols.http.h11_impl import H11Protocol

log = structlog.get_logger(__name__)


class ServerSettings(BaseModel):
    header_timeout_seconds: float = Field(default=10, gt=0, le=300, description="to receive a request's headers")
    body_timeout_seconds: float = Field(default=30, gt=0, le=3600, description="to receive a request's body")
    keep_alive_seconds: float = Field(default=5, gt=0, le=600, description="an idle keep-alive connection is closed")
    max_connections: int = Field(default=1000, ge=1, description="concurrent connections (503 past it)")
    max_header_bytes: int = Field(default=16 * 1024, ge=1024, le=1024 * 1024, description="request line + headers")


class GuardedH11Protocol(H11Protocol):
    header_timeout: float = 10.0
    body_timeout: float = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting_for: str | None = "headers"
        self._arm(self.header_timeout, "headers")

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expire, what)

    def _disarm(self) -> None:
        deadline = getattr(self, "_deadline", None)
        if deadline is not None:
            deadline.cancel()
            self._deadline = None

    def _expire(self, what: str) -> None:
        self._deadline = None
        log.warning("slow_client_closed", waiting_for=what, client=str(self.client))
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.IDLE:
            if self._deadline is None and data:  # the first bytes of a next request: its headers are due
                self._arm(self.header_timeout, "headers")
        elif state is h11.SEND_BODY:
            if self._waiting_for != "body":
                self._waiting_for = "body"
                self._arm(self.body_timeout, "body")
        else:  # the request is complete (or the connection is done): the app's own time is not bounded here
            self._waiting_for = None
            self._disarm()

    def on_response_complete(self) -> None:
        self._waiting_for = None
        self._disarm()  # idle from here on: uvicorn's keep-alive timer applies
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def protocol_class(settings: ServerSettings) -> type[GuardedH11Protocol]:
    return type(
        "ConfiguredH11Protocol",
        (GuardedH11Protocol,),
        {"header_timeout": settings.header_timeout_seconds, "body_timeout": settings.body_timeout_seconds},
    )


def uvicorn_options(settings: ServerSettings) -> dict[str, Any]:
    return {
        "http": protocol_class(settings),
        "timeout_keep_alive": settings.keep_alive_seconds,
        "limit_concurrency": settings.max_connections,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
    }
