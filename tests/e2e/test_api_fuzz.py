"""A lasting guard: schemathesis generates requests for every operation of the published OpenAPI document and
sends them to a real `metergate dev` (on SQLite, and on PostgreSQL when it answers). No request may get a 5xx,
and every 4xx is problem+json. Bounded: a fixed number of examples per operation, no deadline per example."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.e2e.test_dev_server import DevServer, running_dev_server
from tests.support.services import fresh_postgres_database

pytestmark = pytest.mark.e2e

EXAMPLES_PER_OPERATION = 25


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fuzzed_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    data_dir: Path = tmp_path_factory.mktemp(f"fuzz-{request.param}") / "data"
    with contextlib.ExitStack() as stack:
        env: dict[str, str] = {}
        if request.param == "postgresql":
            env["METERGATE_DATABASE__URL"] = stack.enter_context(fresh_postgres_database("fuzz"))
        yield stack.enter_context(running_dev_server(data_dir, env))


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
            # Every response must match the schema the document publishes for it (entitlements/openapi.py for
            # the entitlement and customer routes; tests/unit/test_openapi_responses.py holds real ones to it).
            try:
                case.validate_response(response, checks=[response_schema_conformance])
            except Exception as exc:  # noqa: BLE001 - schemathesis raises a group of failures
                failures.append(f"schema: {where}: {str(exc)[:300]}")

        fuzz()
    assert failures == [], "\n".join(sorted(set(failures))[:20])


CORPUS = json.loads((Path(__file__).resolve().parents[1] / "corpus" / "hostile_values.json").read_text())["values"]


def body_fields(operation: Any) -> list[str]:
    """Top-level property names of the operation's JSON body schema (none when it declares no body)."""
    body = operation.definition.raw.get("requestBody") or {}
    names: set[str] = set()
    for media in (body.get("content") or {}).values():
        schema = media.get("schema") or {}
        if "$ref" in schema:
            schema = operation.schema.raw_schema
            for part in media["schema"]["$ref"].lstrip("#/").split("/"):
                schema = schema.get(part, {})
        names |= set((schema.get("properties") or {}).keys())
    return sorted(names)


def test_the_hostile_corpus_through_every_route(fuzzed_server: DevServer) -> None:
    failures: list[str] = []
    with httpx.Client(base_url=fuzzed_server.base_url, timeout=30) as client:
        for operation in operations(fuzzed_server):
            fields = body_fields(operation) or ["key", "amount", "type", "interval", "time", "subject", "id"]
            for value in CORPUS:
                path = operation.path
                for name in operation.path_parameters:
                    raw = str(value).encode("utf-8", "surrogatepass")
                    path = path.replace("{" + name.name + "}", quote(raw, safe="") or "x")
                body = json.dumps(dict.fromkeys(fields, value))  # ASCII: a lone surrogate travels as an escape
                content = body if operation.method not in ("get", "delete") else None
                headers = {"content-type": "application/json"}
                r = client.request(operation.method.upper(), path, content=content, headers=headers)
                where = f"{operation.method.upper()} {path[:80]} {str(value)[:40]!r}: {r.status_code} {r.text[:200]}"
                if r.status_code >= 500:
                    failures.append(where)
                elif r.status_code >= 400 and "problem+json" not in r.headers.get("content-type", ""):
                    failures.append("not problem+json: " + where)
    assert failures == [], "\n".join(failures[:20])
