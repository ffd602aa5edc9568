"""A running `metergate dev` sheds slow clients (header and body read timeouts, idle keep-alive) while normal
requests go on. Timeouts are set short here; the clients trickle bytes far longer than they allow."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.test_dev_server import DevServer, running_dev_server

pytestmark = pytest.mark.e2e

TRICKLE_BYTES = 40
TRICKLE_EVERY = 0.25  # 10 s in all: far past the 1 s allowed


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    env = {
        "METERGATE_SERVER__HEADER_TIMEOUT_SECONDS": "1",
        "METERGATE_SERVER__BODY_TIMEOUT_SECONDS": "1",
        "METERGATE_SERVER__KEEP_ALIVE_SECONDS": "1",
    }
    with running_dev_server(tmp_path_factory.mktemp("slow") / "data", env) as server:
        yield server


def connect(dev: DevServer) -> socket.socket:
    host, port = dev.base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.settimeout(TRICKLE_EVERY)
    return sock


def trickle_until_closed(sock: socket.socket, data: bytes) -> int:
    """Send `data` a byte at a time; return how many bytes went out before the server closed the connection
    (len(data) if it never did)."""
    for sent, byte in enumerate(data[:TRICKLE_BYTES]):
        try:
            sock.sendall(bytes([byte]))
            if sock.recv(1024) == b"":
                return sent
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return sent
    return len(data)


def test_slow_headers_are_cut_off_while_normal_requests_go_on(dev: DevServer) -> None:
    sock = connect(dev)
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100 + b"\r\n\r\n"
    sent = trickle_until_closed(sock, request)
    sock.close()
    assert sent < TRICKLE_BYTES, "a client trickling its headers was never cut off"
    assert httpx.get(f"{dev.base_url}/healthz", timeout=5).status_code == 200


def test_a_slow_body_is_cut_off(dev: DevServer) -> None:
    sock = connect(dev)
    sock.sendall(
        b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/cloudevents+json\r\n"
        b"Content-Length: 500\r\n\r\n"
    )
    sent = trickle_until_closed(sock, b"{" + b" " * 499)
    sock.close()
    assert sent < TRICKLE_BYTES, "a client trickling its body was never cut off"
    assert httpx.get(f"{dev.base_url}/healthz", timeout=5).status_code == 200


def test_an_idle_keep_alive_connection_is_closed(dev: DevServer) -> None:
    sock = connect(dev)
    sock.settimeout(5)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    closed = False
    while time.monotonic() - started < 8:
        try:
            if sock.recv(1024) == b"":
                closed = True
                break
        except TimeoutError:
            break
    sock.close()
    assert closed, "an idle keep-alive connection stayed open"


def test_oversized_headers_are_refused(dev: DevServer) -> None:
    r = httpx.get(f"{dev.base_url}/healthz", headers={"X-Big": "a" * 40_000}, timeout=5)
    assert r.status_code == 431
    assert "larger than" in r.json()["detail"]


def read_until_closed(sock: socket.socket, deadline_s: float = 5) -> bytes:
    sock.settimeout(deadline_s)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return received


def test_an_endless_header_is_refused_before_it_completes(dev: DevServer) -> None:
    """Headers that never end are not buffered without bound: past twice the header limit (16 KiB by
    default) the server answers 431 and closes, before the client ever finishes them."""
    sock = connect(dev)
    sock.settimeout(5)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Endless: ")
    refused = False
    for _ in range(20):  # 80 KiB offered in all, 4 KiB at a time, no end of line
        try:
            sock.sendall(b"a" * 4096)
        except (ConnectionResetError, BrokenPipeError):
            refused = True
            break
        time.sleep(0.01)
    response = read_until_closed(sock)
    sock.close()
    assert response.startswith(b"HTTP/1.1 431"), response[:200]
    assert b"larger than 32768 bytes" in response
    assert refused or response, "the server kept reading an endless header"
    assert httpx.get(f"{dev.base_url}/healthz", timeout=5).status_code == 200


def test_pipelined_requests_are_all_answered_in_order(dev: DevServer) -> None:
    sock = connect(dev)
    sock.settimeout(5)
    sock.sendall(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    response = read_until_closed(sock)
    sock.close()
    assert re.findall(rb"HTTP/1\.1 ([0-9]{3}) ", response) == [b"200", b"404", b"200"], response


def test_slow_headers_of_a_second_request_on_a_kept_alive_connection_are_cut_off(dev: DevServer) -> None:
    """The header deadline is armed again for each request on a connection, not only for its first."""
    sock = connect(dev)
    sock.settimeout(5)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    sock.settimeout(TRICKLE_EVERY)
    # 0.1 s apart (keep-alive allows 1 s idle, headers 1 s in all): only the header deadline can end this
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100 + b"\r\n\r\n"
    sent = 0
    closed = False
    for sent, byte in enumerate(request[:TRICKLE_BYTES]):  # noqa: B007
        try:
            sock.sendall(bytes([byte]))
            time.sleep(0.1)
            if sock.recv(1024) == b"":
                closed = True
                break
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            closed = True
            break
    sock.close()
    assert closed, "a second request trickling its headers was never cut off"
    assert sent < TRICKLE_BYTES
