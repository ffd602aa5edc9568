"""The embedded path end to end in one process: POST -> EmbeddedLog -> sink -> ClickHouse (chdb) -> GET."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import orjson
import pytest

from common.clickhouse import ClickHouse
from common.clock import FrozenClock
from common.events_table import EVENTS_TABLE
from common.settings import AuthSettings
from ingest.events_reader import ClickHouseEventsReader
from ingest.settings import SinkSettings
from ingest.sink.embedded import EmbeddedLog
from metergate.app import create_app
from metergate.wiring import Services

pytestmark = pytest.mark.integration

KEY_A = "embedded-key-a-0123456789"
KEY_B = "embedded-key-b-0123456789"
NOW = datetime(2025, 6, 1, 8, 30, 0, 7000, tzinfo=UTC)
BATCH = "application/cloudevents-batch+json"


@pytest.fixture
async def client(clickhouse: ClickHouse) -> AsyncIterator[httpx.AsyncClient]:
    clock = FrozenClock(NOW)
    log = EmbeddedLog(clickhouse, SinkSettings(), clock=clock)
    await log.start()
    services = Services(
        clickhouse=clickhouse, publisher=log, clock=clock, events_reader=ClickHouseEventsReader(clickhouse)
    )
    services.on_close(log.close)
    app = create_app(services, AuthSettings(api_keys={KEY_A: "tenant-a", KEY_B: "tenant-b"}))
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://metergate",
            headers={"Authorization": f"Bearer {KEY_A}"},
        ) as c:
            yield c
    finally:
        await services.close()


def events(ids: range, **extra: object) -> list[dict[str, object]]:
    return [
        {
            "specversion": "1.0",
            "id": f"e{i}",
            "source": "billing",
            "type": "request",
            "subject": f"customer-{i % 4}",
            "time": f"2025-05-01T00:00:{i % 60:02d}.{i % 1000:03d}Z",
            "data": {"n": i},
            **extra,
        }
        for i in ids
    ]


async def listed(client: httpx.AsyncClient, key: str = KEY_A, **params: object) -> list[dict[str, object]]:
    response = await client.get("/api/v1/events", params=params, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    body: list[dict[str, object]] = response.json()
    return body


async def test_posted_events_are_stored_once_and_listed(client: httpx.AsyncClient, clickhouse: ClickHouse) -> None:
    for chunk in (range(0, 100), range(50, 150)):  # 50 duplicates across requests
        response = await client.post(
            "/api/v1/events", content=orjson.dumps(events(chunk)), headers={"Content-Type": BATCH}
        )
        assert response.status_code == 204, response.text

    count = clickhouse.rows(f"SELECT count(), uniqExact(id) FROM {clickhouse.table(EVENTS_TABLE)}")[0]
    assert tuple(count) == (150, 150)
    items = await listed(client, limit=1000)
    assert len(items) == 150
    times = [item["event"]["time"] for item in items]  # type: ignore[index]
    assert times == sorted(times, reverse=True)
    e7 = next(item for item in items if item["event"]["id"] == "e7")  # type: ignore[index]
    assert e7["event"]["time"] == "2025-05-01T00:00:07.007Z"  # type: ignore[index]
    assert e7["event"]["data"] == {"n": 7}  # type: ignore[index]
    assert e7["ingestedAt"] == "2025-06-01T08:30:00.007Z"
    assert e7["validationError"] is None


async def test_invalid_batch_stores_nothing(client: httpx.AsyncClient, clickhouse: ClickHouse) -> None:
    batch = events(range(10))
    batch[9]["data"] = "not an object"
    response = await client.post("/api/v1/events", content=orjson.dumps(batch), headers={"Content-Type": BATCH})
    assert response.status_code == 400
    assert response.json()["index"] == 9
    assert clickhouse.rows(f"SELECT count() FROM {clickhouse.table(EVENTS_TABLE)}")[0][0] == 0


async def test_namespaces_are_isolated_end_to_end(client: httpx.AsyncClient) -> None:
    same = events(range(3))
    for key in (KEY_A, KEY_B):  # the same ids in two namespaces are two different events
        response = await client.post(
            "/api/v1/events",
            content=orjson.dumps(same if key == KEY_A else [*same, *events(range(3, 5))]),
            headers={"Content-Type": BATCH, "Authorization": f"Bearer {key}"},
        )
        assert response.status_code == 204
    assert len(await listed(client, KEY_A)) == 3
    assert len(await listed(client, KEY_B)) == 5
    assert {i["event"]["subject"] for i in await listed(client, KEY_B, subject="customer-3")} == {"customer-3"}  # type: ignore[index]


@pytest.mark.parametrize("content_type", [True, False])
async def test_the_official_sdks_http_structured_mode_is_stored_exactly(
    client: httpx.AsyncClient, clickhouse: ClickHouse, content_type: bool
) -> None:
    """PyPI `cloudevents`: `to_structured` gives the headers and body a service POSTs (README example)."""
    from cloudevents.conversion import to_structured
    from cloudevents.http import CloudEvent as SdkEvent

    attributes = {
        "type": "tokens",
        "source": "sdk",
        "subject": "customer-1",
        "id": f"sdk-{content_type}",
        "time": "2025-06-01T08:00:00.123456Z",
    }
    if content_type:
        attributes["datacontenttype"] = "application/json"
    headers, body = to_structured(SdkEvent(attributes, {"tokens": 42, "model": "gpt-4"}))
    r = await client.post("/api/v1/events", content=body, headers=headers)
    assert r.status_code == 204, r.text
    stored = (await client.get("/api/v1/events", params={"subject": "customer-1"})).json()
    mine = [e["event"] for e in stored if e["event"]["id"] == f"sdk-{content_type}"]
    assert len(mine) == 1
    mine[0].pop("datacontenttype", None)  # listed as application/json: the only data content type stored
    assert mine == [
        {
            "specversion": "1.0",
            "id": f"sdk-{content_type}",
            "source": "sdk",
            "type": "tokens",
            "subject": "customer-1",
            "time": "2025-06-01T08:00:00.123Z",
            "data": {"model": "gpt-4", "tokens": 42},
        }
    ]


async def test_the_npm_sdks_http_structured_mode_is_stored_exactly(client: httpx.AsyncClient) -> None:
    from tests.support.npm_sdk import npm_sdk_messages

    message = next(m for m in npm_sdk_messages() if m["kind"] == "http" and m["mode"] == "structured")
    r = await client.post("/api/v1/events", content=message["body"], headers=message["headers"])
    assert r.status_code == 204, r.text
    stored = (await client.get("/api/v1/events", params={"id": "npm-http-structured"})).json()
    assert [e["event"]["data"] for e in stored] == [{"tokens": 11}]
