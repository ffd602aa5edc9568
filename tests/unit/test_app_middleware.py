"""The ASGI middlewares of metergate.app, driven with raw ASGI messages (no server, no services)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from common.settings import AuthSettings
from metergate.app import AuthMiddleware, BodyLimitMiddleware, ConfigError, check_auth_binding, is_loopback


class Inner:
    """An ASGI app that reads the whole body and echoes its size and the namespace."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.calls += 1
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        payload = orjson.dumps({"size": len(body), "namespace": scope.get("state", {}).get("namespace")})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": payload})


async def call(
    app: Any, chunks: list[bytes], headers: list[tuple[bytes, bytes]], path: str = "/api/v1/events"
) -> tuple[int, dict[str, Any]]:
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)] or [
        {"type": "http.request", "body": b"", "more_body": False}
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = sent[0]["status"]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return status, orjson.loads(body)


async def test_body_limit_counts_bytes_received_not_the_declared_length() -> None:
    inner = Inner()
    app = BodyLimitMiddleware(inner, max_body_bytes=1000)
    status, body = await call(app, [b"x" * 600, b"x" * 600], [(b"content-length", b"10")])
    assert status == 413
    assert body["status"] == 413
    assert body["limit"] == 1000
    assert inner.calls == 0


async def test_body_limit_refuses_a_large_declared_length_without_reading() -> None:
    inner = Inner()
    app = BodyLimitMiddleware(inner, max_body_bytes=1000)
    status, _ = await call(app, [b"x"], [(b"content-length", b"5000")])
    assert status == 413
    assert inner.calls == 0


@pytest.mark.parametrize("sizes", [[1000], [500, 500], [1] * 1000, [0, 0, 1000]])
async def test_body_limit_passes_bodies_up_to_the_limit(sizes: list[int]) -> None:
    inner = Inner()
    status, body = await call(BodyLimitMiddleware(inner, max_body_bytes=1000), [b"y" * n for n in sizes], [])
    assert status == 200
    assert body["size"] == sum(sizes)


async def test_auth_resolves_namespace_by_key() -> None:
    app = AuthMiddleware(Inner(), api_keys={"k" * 16: "ns1", "j" * 16: "ns2"}, default_namespace="default")
    status, body = await call(app, [b""], [(b"authorization", b"Bearer " + b"j" * 16)])
    assert (status, body["namespace"]) == (200, "ns2")
    status, body = await call(app, [b""], [(b"authorization", b"Bearer " + b"k" * 15)])
    assert status == 401
    assert body["title"] == "Unauthorized"


async def test_auth_leaves_non_api_paths_alone() -> None:
    app = AuthMiddleware(Inner(), api_keys={"k" * 16: "ns1"}, default_namespace="default")
    status, body = await call(app, [b""], [], path="/healthz")
    assert (status, body["namespace"]) == (200, None)


async def test_auth_off_uses_the_default_namespace() -> None:
    app = AuthMiddleware(Inner(), api_keys=None, default_namespace="dev")
    status, body = await call(app, [b""], [(b"authorization", b"Bearer whatever-it-is")])
    assert (status, body["namespace"]) == (200, "dev")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.1", False), ("example.com", False)],
)  # fmt: skip
def test_auth_off_only_on_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    off = AuthSettings(enabled=False)
    if loopback:
        check_auth_binding(off, host)
    else:
        with pytest.raises(ConfigError, match="loopback"):
            check_auth_binding(off, host)


def test_auth_on_needs_keys() -> None:
    with pytest.raises(ConfigError, match="no API keys"):
        check_auth_binding(AuthSettings(enabled=True), "0.0.0.0")
    check_auth_binding(AuthSettings(enabled=True, api_keys={"a" * 16: "ns"}), "0.0.0.0")


@pytest.mark.parametrize("namespace", ["", "acme corp", "a/b", "x" * 65, "ns\n", "é"])
def test_api_keys_map_only_to_storable_namespaces(namespace: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="namespace"):
        AuthSettings(api_keys={"k" * 16: namespace})


async def hygiene(raw_path: bytes, query: bytes = b"") -> tuple[int, dict[str, Any]]:
    from metergate.app import InputHygieneMiddleware

    scope = {
        "type": "http",
        "method": "GET",
        "path": raw_path.decode("latin-1"),
        "raw_path": raw_path,
        "query_string": query,
        "headers": [],
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await InputHygieneMiddleware(Inner())(scope, receive, send)
    return sent[0]["status"], orjson.loads(b"".join(m.get("body", b"") for m in sent[1:]))


@pytest.mark.parametrize(
    ("raw_path", "query", "reason"),
    [
        (b"/api/v1/subjects/a%00b/entitlements", b"", "NUL"),
        (b"/api/v1/subjects/%ff%fe/entitlements", b"", "UTF-8"),
        (b"/api/v1/entitlements", b"subject=a%00", "NUL"),
        (b"/api/v1/entitlements", b"subject=%c3%28", "UTF-8"),
        (b"/api/v1/subjects/" + b"x" * 1025 + b"/entitlements", b"", "longer than 1024"),
    ],
)
async def test_urls_no_route_can_store_faithfully_are_a_400(raw_path: bytes, query: bytes, reason: str) -> None:
    status, body = await hygiene(raw_path, query)
    assert status == 400
    assert reason in body["detail"]


async def test_ordinary_urls_pass_hygiene() -> None:
    status, _ = await hygiene(b"/api/v1/subjects/kund%C3%A9-1/entitlements", b"subject=caf%C3%A9&x=a+b")
    assert status == 200
