"""A lasting guard: schemathesis generates requests for every operation of the published OpenAPI document and
sends them to a real `metergate dev` (on SQLite, and on PostgreSQL when it answers). No request may get a 5xx,
and every 4xx is problem+json. Bounded: a fixed number of examples per operation, no deadline per example."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.e2e.test_dev_server import DevServer, running_dev_server
from tests.support.services import postgres_url

pytestmark = pytest.mark.e2e

EXAMPLES_PER_OPERATION = 25


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fuzzed_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    env: dict[str, str] = {}
    database: str | None = None
    if request.param == "postgresql":
        server = postgres_url()
        if server is None:
            pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432 (set POSTGRES_URL)")
        import psycopg

        admin = server.replace("postgresql+psycopg://", "postgresql://")
        database = f"fuzz_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        env["METERGATE_DATABASE__URL"] = f"{server.rpartition('/')[0]}/{database}"
    data_dir: Path = tmp_path_factory.mktemp(f"fuzz-{request.param}") / "data"
    try:
        with running_dev_server(data_dir, env) as dev:
            yield dev
    finally:
        if database is not None:
            import psycopg

            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def operations(server: DevServer) -> list[Any]:
    schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def test_no_request_breaks_the_service(fuzzed_server: DevServer) -> None:
    failures: list[str] = []
    ops = operations(fuzzed_server)
    assert len(ops) > 30, "the OpenAPI document lost its operations"
    for operation in ops:

        @settings(
            max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        @given(case=operation.as_strategy())
        def fuzz(case: Any) -> None:
            response = case.call(base_url=fuzzed_server.base_url, timeout=30)
            where = f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}"
            if response.status_code >= 500:
                failures.append(where)
            elif response.status_code >= 400:
                content_type = response.headers.get("content-type") or [""]
                if "problem+json" not in (content_type[0] if isinstance(content_type, list) else content_type):
                    failures.append("not problem+json: " + where)

        fuzz()
    assert failures == [], "\n".join(sorted(set(failures))[:20])
