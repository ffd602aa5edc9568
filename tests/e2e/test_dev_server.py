"""`metergate dev` as a user runs it: a real subprocess on a free port with its own data folder.

Events go in over HTTP and come back from the embedded ClickHouse; after a restart on the same folder
they are still there and a re-sent batch is not stored twice.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.support.services import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


class DevServer:
    def __init__(self, data_dir: Path, port: int, env: dict[str, str] | None = None) -> None:
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = data_dir.parent / f"dev-{port}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "metergate", "dev", "--port", str(port), "--data-dir", str(data_dir)],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"metergate dev exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"metergate dev did not answer within {timeout}s:\n{self.output()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@contextlib.contextmanager
def running_dev_server(data_dir: Path, env: dict[str, str] | None = None) -> Iterator[DevServer]:
    """`metergate dev` on a free port, ready to answer; stopped (SIGTERM) on exit."""
    server = DevServer(data_dir, free_port(), env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def dev(data_dir: Path) -> Iterator[DevServer]:
    with running_dev_server(data_dir) as server:
        yield server


def batch(ids: range) -> bytes:
    return orjson.dumps(
        [
            {
                "specversion": "1.0",
                "id": f"req-{i}",
                "source": "gateway",
                "type": "api-call",
                "subject": f"customer-{i % 3}",
                "time": f"2025-02-03T04:05:{i % 60:02d}.{i:03d}Z",
                "data": {"route": "/v1/chat", "tokens": i},
            }
            for i in ids
        ]
    )


def test_dev_ingests_lists_and_survives_a_restart(dev: DevServer, data_dir: Path) -> None:
    assert "Auth         OFF" in dev.output()
    assert "curl" in dev.output()
    with httpx.Client(base_url=dev.base_url, timeout=30) as client:
        for ids in (range(0, 200), range(100, 300)):
            response = client.post(
                "/api/v1/events", content=batch(ids), headers={"Content-Type": "application/cloudevents-batch+json"}
            )
            assert response.status_code == 204, response.text
        single = client.post(
            "/api/v1/events",
            content=orjson.dumps({"specversion": "1.0", "id": "one", "source": "cli", "type": "t", "subject": "s"}),
            headers={"Content-Type": "application/cloudevents+json"},
        )
        assert single.status_code == 204
        items = client.get("/api/v1/events", params={"limit": 1000}).json()
        assert len(items) == 301
        assert items[0]["event"]["id"] == "one"  # no time given: receipt time, the newest
        by_subject = client.get("/api/v1/events", params={"subject": "customer-1", "limit": 1000}).json()
        assert {i["event"]["id"] for i in by_subject} == {f"req-{i}" for i in range(300) if i % 3 == 1}
        bad = client.post("/api/v1/events", content=b"[", headers={"Content-Type": "application/json"})
        assert bad.status_code == 400
        assert bad.headers["content-type"] == "application/problem+json"
    assert dev.stop() == 0

    again = DevServer(data_dir, free_port())
    try:
        again.wait_ready()
        with httpx.Client(base_url=again.base_url, timeout=30) as client:
            response = client.post(
                "/api/v1/events",
                content=batch(range(250, 350)),
                headers={"Content-Type": "application/cloudevents-batch+json"},
            )
            assert response.status_code == 204
            items = client.get("/api/v1/events", params={"limit": 1000}).json()
            assert len(items) == 351  # 50 new, 50 re-sent and stored once
    finally:
        assert again.stop() == 0


def test_dev_refuses_auth_off_on_a_public_address(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "metergate", "dev", "--host", "0.0.0.0", "--check-config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "loopback" in result.stderr


def test_dev_with_keys_requires_them(data_dir: Path) -> None:
    key = "e2e-secret-key-0123456789"
    server = DevServer(data_dir, free_port(), env={"METERGATE_AUTH__API_KEYS": orjson.dumps({key: "acme"}).decode()})
    try:
        server.wait_ready()
        assert "Auth         on" in server.output()
        body = orjson.dumps({"specversion": "1.0", "id": "1", "source": "s", "type": "t", "subject": "u"})
        headers = {"Content-Type": "application/json"}
        assert httpx.post(f"{server.base_url}/api/v1/events", content=body, headers=headers).status_code == 401
        ok = httpx.post(
            f"{server.base_url}/api/v1/events", content=body, headers={**headers, "Authorization": f"Bearer {key}"}
        )
        assert ok.status_code == 204
    finally:
        server.stop()
