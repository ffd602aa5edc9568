"""HTTP ingest and the events listing through the real app, against a real ClickHouse database (chdb).

The publisher here is the port's in-memory fake (it records what was accepted), so these tests pin the
HTTP contract: content types, validation as a whole batch, size limits, auth and namespaces. The
Kafka and embedded paths have their own tests (test_http_ingest_kafka.py, test_http_ingest_embedded.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import httpx
import orjson
import pytest

from common.clickhouse import ClickHouse
from common.clock import FrozenClock
from common.cloudevents import CloudEvent, validate_event
from common.events_table import EVENTS_TABLE, events_table_ddl
from common.settings import AuthSettings
from ingest.events_reader import ClickHouseEventsReader
from metergate.app import create_app
from metergate.wiring import Services
from tests.support.openapi_check import validating_hook

pytestmark = pytest.mark.integration

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-0123456789abcdef"
NOW = datetime(2025, 3, 1, 12, 0, 0, 250000, tzinfo=UTC)


class RecordingPublisher:
    """In-memory fake of ingest.publisher.EventPublisher."""

    def __init__(self) -> None:
        self.published: list[tuple[str, list[CloudEvent], datetime]] = []

    async def publish(self, namespace: str, events: Sequence[CloudEvent], ingested_at: datetime) -> None:
        self.published.append((namespace, list(events), ingested_at))

    async def close(self) -> None:
        return None

    def events(self) -> list[CloudEvent]:
        return [e for _, events, _ in self.published for e in events]


def event(i: int = 1, **overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "specversion": "1.0",
        "id": f"evt-{i}",
        "source": "test",
        "type": "tokens",
        "subject": "customer-1",
        "time": "2025-01-01T00:00:00.123Z",
        "data": {"tokens": i},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def services(clickhouse: ClickHouse, publisher: RecordingPublisher) -> Services:
    clickhouse.command(events_table_ddl(clickhouse.database))
    return Services(
        clickhouse=clickhouse,
        publisher=publisher,
        clock=FrozenClock(NOW),
        events_reader=ClickHouseEventsReader(clickhouse),
        max_body_bytes=64 * 1024,
    )


@pytest.fixture
async def client(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(services, AuthSettings(enabled=True, api_keys={KEY_A: "ns-a", KEY_B: "ns-b"}))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://metergate",
        headers={"Authorization": f"Bearer {KEY_A}"},
        event_hooks={"response": [validating_hook(app)]},  # every success body against its published schema
    ) as c:
        yield c


async def post(
    client: httpx.AsyncClient, body: object, content_type: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await client.post(
        "/api/v1/events",
        content=body if isinstance(body, bytes) else orjson.dumps(body),
        headers={"Content-Type": content_type, **(headers or {})},
    )


@pytest.mark.parametrize(
    ("content_type", "body", "count"),
    [
        ("application/cloudevents+json", event(1), 1),
        ("application/cloudevents+json; charset=utf-8", event(1), 1),
        ("application/cloudevents-batch+json", [event(i) for i in range(5)], 5),
        ("application/json", event(1), 1),
        ("application/json", [event(i) for i in range(3)], 3),
        ("Application/JSON", [event(1)], 1),
    ],
)
async def test_accepted_content_types(
    client: httpx.AsyncClient, publisher: RecordingPublisher, content_type: str, body: object, count: int
) -> None:
    response = await post(client, body, content_type)
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert [ns for ns, _, _ in publisher.published] == ["ns-a"]
    assert len(publisher.events()) == count
    assert publisher.published[0][2] == NOW


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "multipart/form-data", ""])
async def test_other_content_types_are_415(
    client: httpx.AsyncClient, publisher: RecordingPublisher, content_type: str
) -> None:
    response = await post(client, event(1), content_type)
    assert response.status_code == 415
    assert response.headers["content-type"] == "application/problem+json"
    assert publisher.published == []


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b"{not json"),
        ("application/json", b""),
        ("application/json", b'{"id": "1",'),
        ("application/json", b"\xff\xfe{}"),
        ("application/cloudevents+json", orjson.dumps([event(1)])),
        ("application/cloudevents-batch+json", orjson.dumps(event(1))),
        ("application/cloudevents-batch+json", b"[]"),
        ("application/json", b"[]"),
        ("application/json", b"42"),
        ("application/json", b'"an event"'),
    ],
)
async def test_malformed_documents_are_400(
    client: httpx.AsyncClient, publisher: RecordingPublisher, content_type: str, body: bytes
) -> None:
    response = await post(client, body, content_type)
    assert response.status_code == 400, response.text
    problem = response.json()
    assert problem["status"] == 400
    assert problem["title"] == "Bad Request"
    assert problem["detail"]
    assert publisher.published == []


async def test_one_bad_event_rejects_the_whole_batch_and_names_index_and_field(
    client: httpx.AsyncClient, publisher: RecordingPublisher
) -> None:
    batch = [event(i) for i in range(10)]
    batch[7] = event(7, time="yesterday")
    response = await post(client, batch, "application/cloudevents-batch+json")
    assert response.status_code == 400
    problem = response.json()
    assert problem["index"] == 7
    assert problem["field"] == "time"
    assert problem["pointer"] == "[7].time"
    assert "event 7" in problem["detail"]
    assert publisher.published == []


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"id": ""}, "id"),
        ({"source": None}, "source"),
        ({"specversion": "0.3"}, "specversion"),
        ({"type": 5}, "type"),
        ({"subject": "   "}, "subject"),
        ({"data": [1, 2]}, "data"),
        ({"datacontenttype": "text/plain"}, "datacontenttype"),
    ],
)
async def test_single_event_errors_name_the_field(
    client: httpx.AsyncClient, publisher: RecordingPublisher, bad: dict[str, object], field: str
) -> None:
    body = {**event(1), **bad}
    response = await post(client, {k: v for k, v in body.items() if v is not None}, "application/cloudevents+json")
    assert response.status_code == 400
    problem = response.json()
    assert problem["field"] == field
    assert "index" not in problem
    assert publisher.published == []


async def test_missing_time_defaults_to_receipt_time(client: httpx.AsyncClient, publisher: RecordingPublisher) -> None:
    response = await post(client, event(1, time=None), "application/cloudevents+json")
    assert response.status_code == 204
    assert publisher.events()[0].time == NOW  # ms kept: 12:00:00.250


async def test_body_over_the_limit_is_413_even_when_streamed_without_length(
    client: httpx.AsyncClient, publisher: RecordingPublisher
) -> None:
    chunk = b" " * 16 * 1024

    async def body() -> AsyncIterator[bytes]:
        for _ in range(8):  # 128 KiB of whitespace, limit 64 KiB, no Content-Length
            yield chunk

    response = await client.post("/api/v1/events", content=body(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json()["limit"] == 64 * 1024
    assert publisher.published == []


async def test_body_under_the_limit_is_accepted_when_streamed(
    client: httpx.AsyncClient, publisher: RecordingPublisher
) -> None:
    payload = orjson.dumps([event(i) for i in range(100)])

    async def body() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 1000):
            yield payload[start : start + 1000]

    response = await client.post("/api/v1/events", content=body(), headers={"Content-Type": "application/json"})
    assert response.status_code == 204
    assert len(publisher.events()) == 100


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer nope", f"Basic {KEY_A}", f"bearer{KEY_A}"])
async def test_requests_without_a_valid_key_are_401(
    services: Services, publisher: RecordingPublisher, authorization: str | None
) -> None:
    app = create_app(services, AuthSettings(enabled=True, api_keys={KEY_A: "ns-a"}))
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://m") as c:
        post_response = await c.post("/api/v1/events", content=orjson.dumps(event(1)), headers=headers)
        get_response = await c.get("/api/v1/events", headers=headers)
    for response in (post_response, get_response):
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.headers["content-type"] == "application/problem+json"
    assert publisher.published == []


async def test_bearer_scheme_is_case_insensitive(client: httpx.AsyncClient, publisher: RecordingPublisher) -> None:
    response = await post(client, event(1), "application/json", headers={"Authorization": f"bearer {KEY_B}"})
    assert response.status_code == 204
    assert publisher.published[0][0] == "ns-b"


def insert_stored(ch: ClickHouse, namespace: str, events: list[CloudEvent], stored_at: datetime) -> None:
    rows = [
        [namespace, e.id, e.source, e.type, e.subject, e.time, e.data, stored_at, stored_at, 0, i]
        for i, e in enumerate(events)
    ]
    columns = [
        "namespace", "id", "source", "type", "subject", "time", "data",
        "ingested_at", "stored_at", "ingest_partition", "ingest_offset",
    ]  # fmt: skip
    ch.call(lambda c: c.insert(ch.table(EVENTS_TABLE), rows, column_names=columns))


def stored(i: int, **overrides: object) -> CloudEvent:
    return validate_event(event(i, **overrides), default_time=NOW)


async def test_list_events_newest_first_with_ms_and_filters(client: httpx.AsyncClient, clickhouse: ClickHouse) -> None:
    events = [
        stored(1, time="2025-01-01T00:00:00.001Z"),
        stored(2, time="2025-01-01T00:00:00.002+00:00", subject="customer-2"),
        stored(3, time="2025-01-02T01:00:00.5+01:00", type="calls"),
        stored(4, time="2025-01-03T00:00:00Z", data=None),
    ]
    insert_stored(clickhouse, "ns-a", events, datetime(2025, 3, 1, tzinfo=UTC))

    body = (await client.get("/api/v1/events")).json()
    assert [item["event"]["id"] for item in body] == ["evt-4", "evt-3", "evt-2", "evt-1"]
    first = body[1]
    assert first["event"]["time"] == "2025-01-02T00:00:00.500Z"
    assert first["event"]["type"] == "calls"
    assert first["event"]["data"] == {"tokens": 3}
    assert first["ingestedAt"] == "2025-03-01T00:00:00.000Z"
    assert first["storedAt"] == "2025-03-01T00:00:00.000Z"
    assert first["validationError"] is None
    assert body[0]["event"]["data"] is None

    async def ids(**params: object) -> list[str]:
        response = await client.get("/api/v1/events", params=params)
        assert response.status_code == 200, response.text
        return [item["event"]["id"] for item in response.json()]

    assert await ids(subject="customer-2") == ["evt-2"]
    assert await ids(type="calls") == ["evt-3"]
    assert await ids(**{"from": "2025-01-01T00:00:00.002Z"}) == ["evt-4", "evt-3", "evt-2"]
    assert await ids(to="2025-01-01T00:00:00.002Z") == ["evt-1"]
    assert await ids(limit=2) == ["evt-4", "evt-3"]
    assert await ids(id="evt-3") == ["evt-3"]
    assert await ids(ingestedAtFrom="2025-03-01T00:00:00Z") == ["evt-4", "evt-3", "evt-2", "evt-1"]
    assert await ids(ingestedAtTo="2025-03-01T00:00:00Z") == []


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 1001},
        {"limit": "many"},
        {"from": "yesterday"},
        {"from": "2025-01-02T00:00:00Z", "to": "2025-01-01T00:00:00Z"},
    ],
)
async def test_list_events_bad_parameters_are_400(client: httpx.AsyncClient, params: dict[str, object]) -> None:
    response = await client.get("/api/v1/events", params=params)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"]


async def test_a_key_never_reads_another_namespace(client: httpx.AsyncClient, clickhouse: ClickHouse) -> None:
    insert_stored(clickhouse, "ns-a", [stored(1)], NOW)
    insert_stored(clickhouse, "ns-b", [stored(2)], NOW)
    as_a = (await client.get("/api/v1/events")).json()
    as_b = (await client.get("/api/v1/events", headers={"Authorization": f"Bearer {KEY_B}"})).json()
    assert [i["event"]["id"] for i in as_a] == ["evt-1"]
    assert [i["event"]["id"] for i in as_b] == ["evt-2"]


async def test_validation_hook_fills_validation_error(
    client: httpx.AsyncClient, clickhouse: ClickHouse, services: Services
) -> None:
    insert_stored(clickhouse, "ns-a", [stored(1), stored(2)], NOW)
    services.event_validation = lambda ns, e: f"{ns}: no tokens" if e.id == "evt-2" else None
    body = (await client.get("/api/v1/events")).json()
    errors = {item["event"]["id"]: item["validationError"] for item in body}
    assert errors == {"evt-1": None, "evt-2": "ns-a: no tokens"}


async def test_unknown_routes_and_methods_are_problem_json(client: httpx.AsyncClient) -> None:
    not_found = await client.get("/api/v1/nothing-here")
    assert not_found.status_code == 404
    assert not_found.headers["content-type"] == "application/problem+json"
    wrong_method = await client.delete("/api/v1/events")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["status"] == 405


async def test_health_needs_no_key(services: Services) -> None:
    app = create_app(services, AuthSettings(enabled=True, api_keys={KEY_A: "ns-a"}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://m") as c:
        assert (await c.get("/healthz")).status_code == 200


async def test_auth_off_uses_the_default_namespace(services: Services, publisher: RecordingPublisher) -> None:
    app = create_app(services, AuthSettings(enabled=False, default_namespace="dev"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://m") as c:
        response = await c.post(
            "/api/v1/events", content=orjson.dumps(event(1)), headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 204
    assert publisher.published[0][0] == "dev"


async def test_test_clock_moves_forward_only(client: httpx.AsyncClient, publisher: RecordingPublisher) -> None:
    assert (await client.get("/api/v1/debug/clock")).json() == {"now": "2025-03-01T12:00:00.250Z", "frozen": True}
    moved = await client.post("/api/v1/debug/clock", json={"time": "2025-04-01T00:00:00Z"})
    assert moved.status_code == 200
    assert moved.json()["now"] == "2025-04-01T00:00:00.000Z"
    back = await client.post("/api/v1/debug/clock", json={"time": "2025-03-01T00:00:00Z"})
    assert back.status_code == 400
    bad = await client.post("/api/v1/debug/clock", json={"when": "now"})
    assert bad.status_code == 400
    await post(client, event(1, time=None), "application/json")
    assert publisher.events()[0].time == datetime(2025, 4, 1, tzinfo=UTC)


async def test_clock_endpoint_is_409_when_not_frozen(services: Services) -> None:
    from common.clock import SystemClock

    services.clock = SystemClock()
    app = create_app(services, AuthSettings(enabled=False))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://m") as c:
        got = await c.get("/api/v1/debug/clock")
        moved = await c.post("/api/v1/debug/clock", json={"time": "2030-01-01T00:00:00Z"})
    assert got.json()["frozen"] is False
    assert moved.status_code == 409


async def test_listing_before_migrate_says_to_migrate(clickhouse: ClickHouse, publisher: RecordingPublisher) -> None:
    services = Services(
        clickhouse=clickhouse,
        publisher=publisher,
        clock=FrozenClock(NOW),
        events_reader=ClickHouseEventsReader(clickhouse),
    )
    app = create_app(services, AuthSettings(enabled=False))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://m") as c:
        response = await c.get("/api/v1/events")
        root = await c.get("/")
    assert response.status_code == 503
    assert "metergate migrate" in response.json()["detail"]
    assert response.headers["retry-after"] == "1"
    assert root.status_code == 307
    assert root.headers["location"] == "/docs"


async def test_openapi_describes_the_ingest_body(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    content = spec["paths"]["/api/v1/events"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/cloudevents+json", "application/cloudevents-batch+json", "application/json"}
    assert "limit" in {p["name"] for p in spec["paths"]["/api/v1/events"]["get"]["parameters"]}
