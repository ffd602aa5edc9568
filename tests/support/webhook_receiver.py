"""A real HTTP webhook receiver on 127.0.0.1 for notification tests: records every request, and can be told
to fail (answer a status) or be down (connection refused) for a while."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class WebhookReceiver:
    requests: list[Received] = field(default_factory=list)
    fail_with: int | None = None  # answer this status instead of 200
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    port: int = 0
    _arrived: threading.Condition = field(default_factory=threading.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                status = receiver.fail_with or 200
                with receiver._arrived:
                    receiver.requests.append(Received({k.lower(): v for k, v in self.headers.items()}, body))
                    receiver._arrived.notify_all()
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Down: the port refuses connections until start() again (same port)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    async def wait_for(self, count: int, within: float = 10.0) -> list[Received]:
        """At least `count` requests (or what arrived within `within` s), without blocking the event loop.
        Requests arrive on the server's threads, so this polls rather than awaiting an asyncio.Event."""
        deadline = time.monotonic() + within
        while len(self.requests) < count and time.monotonic() < deadline:  # noqa: ASYNC110 - see docstring
            await asyncio.sleep(0.01)
        with self._arrived:
            return list(self.requests)
