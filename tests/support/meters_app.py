"""A tiny app serving the meters API on a real ClickHouse engine, with the namespace set per request the
way metergate.app's auth middleware does (header `x-ns`, default ns1), and four events of ns1 stored
before any API meter exists. A config-file COUNT meter `calls` counts events of type `prompt`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response

from aggregator.config import parse_config
from aggregator.http import router
from aggregator.repository import ClickHouseMeterRepository
from aggregator.service import MeterService
from common.clickhouse import ClickHouse
from common.clock import FrozenClock
from common.errors import MetergateError
from common.http import problem_for
from tests.support.meter_events import insert
from tests.support.openapi_check import validating_hook

T0 = datetime(2024, 3, 30, 20, 0, tzinfo=UTC)
TOKENS = {
    "slug": "tokens",
    "aggregation": "SUM",
    "eventType": "prompt",
    "valueProperty": "$.tokens",
    "groupBy": {"model": "$.model"},
}


class FeatureGuard:
    def __init__(self) -> None:
        self.used: dict[str, list[str]] = {}

    async def features_using_meter(self, namespace: str, meter_slug: str) -> list[str]:
        return self.used.get(f"{namespace}/{meter_slug}", [])


@contextlib.asynccontextmanager
async def meters_app(clickhouse: ClickHouse) -> AsyncIterator[SimpleNamespace]:
    guard = FeatureGuard()
    config = parse_config({"meters": [{"slug": "calls", "aggregation": "COUNT", "eventType": "prompt"}]})
    service = MeterService(
        ClickHouseMeterRepository(clickhouse),
        config_meters=config,
        guard=guard,
        clock=FrozenClock(T0 + timedelta(days=5)),
        cache_seconds=0,
    )
    await service.start()
    app = FastAPI()
    app.state.services = SimpleNamespace(meters=service)
    app.include_router(router)

    @app.middleware("http")
    async def namespace(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request.state.namespace = request.headers.get("x-ns", "ns1")
        return await call_next(request)

    async def on_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, MetergateError)
        return problem_for(exc)

    app.add_exception_handler(MetergateError, on_error)
    events: list[dict[str, Any]] = [
        # Europe/Berlin switches to summer time at 2024-03-31T01:00Z.
        {"id": "1", "time": T0, "subject": "alice", "type": "prompt", "data": {"tokens": 10, "model": "a"}},
        {
            "id": "2",
            "time": T0 + timedelta(hours=3, seconds=5),
            "subject": "alice",
            "type": "prompt",
            "data": {"tokens": "2.5", "model": "b"},
        },
        {
            "id": "3",
            "time": T0 + timedelta(hours=30),
            "subject": "bob",
            "type": "prompt",
            "data": {"tokens": 4, "model": "a"},
        },
        {"id": "4", "time": T0 + timedelta(hours=30), "subject": "bob", "type": "prompt", "data": {"tokens": "NaN"}},
    ]
    insert(clickhouse, "ns1", events, "before-meter")
    transport = httpx.ASGITransport(app=app)
    hooks = {"response": [validating_hook(app)]}  # every success body against its published schema
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test", event_hooks=hooks) as client:
            yield SimpleNamespace(client=client, service=service, guard=guard, ch=clickhouse)
    finally:
        await service.close()
