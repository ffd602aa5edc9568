"""All or nothing, for any batch: POST /api/v1/events either publishes every event of the request, in order,
or publishes none and names the first bad event. Driven through the real app with the publisher port's
in-memory fake (no ClickHouse needed for POST)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.clock import FrozenClock
from common.cloudevents import CloudEvent
from common.settings import AuthSettings
from metergate.app import create_app
from metergate.wiring import Services

NOW = datetime(2025, 1, 1, tzinfo=UTC)

# (field, bad value): each makes an otherwise valid event invalid.
BREAKAGES: list[tuple[str, Any]] = [
    ("id", ""),
    ("source", 7),
    ("specversion", "0.3"),
    ("type", None),
    ("subject", "  "),
    ("time", "2025-02-30T00:00:00Z"),
    ("time", "1960-01-01T00:00:00Z"),
    ("data", [1]),
    ("datacontenttype", "text/plain"),
]


class Recording:
    def __init__(self) -> None:
        self.published: list[list[CloudEvent]] = []

    async def publish(self, namespace: str, events: Sequence[CloudEvent], ingested_at: datetime) -> None:
        self.published.append(list(events))

    async def close(self) -> None:
        return None


def event(i: int) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"e{i}",
        "source": "prop",
        "type": "t",
        "subject": f"s{i % 5}",
        "time": f"2025-01-01T00:00:{i % 60:02d}.{i % 1000:03d}Z",
        "data": {"i": i},
    }


batches = st.lists(
    st.one_of(st.none(), st.sampled_from(range(len(BREAKAGES)))),  # None = a valid event
    min_size=1,
    max_size=30,
)


def post(body: bytes) -> tuple[httpx.Response, Recording]:
    publisher = Recording()
    services = Services(
        clickhouse=None,  # type: ignore[arg-type]  # POST never touches ClickHouse
        publisher=publisher,
        clock=FrozenClock(NOW),
        events_reader=None,  # type: ignore[arg-type]
    )
    app = create_app(services, AuthSettings(enabled=False))

    async def run() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://m") as c:
            return await c.post(
                "/api/v1/events", content=body, headers={"Content-Type": "application/cloudevents-batch+json"}
            )

    return asyncio.run(run()), publisher


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches)
def test_a_batch_is_published_whole_or_not_at_all(plan: list[int | None]) -> None:
    values = []
    for i, breakage in enumerate(plan):
        value = event(i)
        if breakage is not None:
            name, bad = BREAKAGES[breakage]
            value[name] = bad
        values.append(value)
    response, publisher = post(orjson.dumps(values))

    bad_indexes = [i for i, b in enumerate(plan) if b is not None]
    if not bad_indexes:
        assert response.status_code == 204, response.text
        assert len(publisher.published) == 1
        assert [e.id for e in publisher.published[0]] == [f"e{i}" for i in range(len(plan))]
    else:
        assert response.status_code == 400
        assert publisher.published == []
        problem = response.json()
        assert problem["index"] == bad_indexes[0]
        assert problem["field"] == BREAKAGES[plan[bad_indexes[0]]][0]  # type: ignore[index]
