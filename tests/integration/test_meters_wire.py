"""The meter query on the wire: OpenMeter's answers without from/to, exact decimals at the limits of
Decimal(38, 9). Real ClickHouse engine (chdb); the events are those of tests.support.meters_app:
alice 10 (model a) at T0 = 2024-03-30T20:00Z and 2.5 (model b) at T0 + 3h 5s, bob 4 (model a) and
one NaN at T0 + 30h."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from aggregator.usage import ClickHouseUsageReader
from common.clickhouse import ClickHouse
from entitlements.schemas import decimal_text
from tests.support.meter_events import insert
from tests.support.meters_app import T0, TOKENS, meters_app

pytestmark = pytest.mark.integration


@pytest.fixture
async def env(clickhouse: ClickHouse) -> AsyncIterator[SimpleNamespace]:
    async with meters_app(clickhouse) as e:
        assert (await e.client.post("/api/v1/meters", json=TOKENS)).status_code == 201
        yield e


def rows(body: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(d["windowStart"], d["windowEnd"], d["subject"], d["value"]) for d in body["data"]]


async def test_no_bounds_spans_the_minutes_of_the_events(env: SimpleNamespace) -> None:
    r = await env.client.get("/api/v1/meters/tokens/query")
    assert r.status_code == 200, r.text
    body = r.json()
    assert "from" not in body
    assert "to" not in body  # echoed only when given
    # [minute of the first event, minute of the last event + 1 minute), not 1970 .. now
    assert rows(body) == [("2024-03-30T20:00:00.000Z", "2024-04-01T02:01:00.000Z", None, 16.5)]

    r = await env.client.get("/api/v1/meters/tokens/query", params={"groupBy": "subject"})
    assert rows(r.json()) == [
        ("2024-03-30T20:00:00.000Z", "2024-03-30T23:01:00.000Z", "alice", 12.5),
        ("2024-04-01T02:00:00.000Z", "2024-04-01T02:01:00.000Z", "bob", 4),
    ]
    # A given bound is echoed and is the window's edge; the missing one still follows the events.
    r = await env.client.get("/api/v1/meters/tokens/query", params={"from": "2024-03-30T21:00:00Z"})
    body = r.json()
    assert body["from"] == "2024-03-30T21:00:00.000Z"
    assert "to" not in body
    assert rows(body) == [("2024-03-30T21:00:00.000Z", "2024-04-01T02:01:00.000Z", None, 6.5)]
    r = await env.client.get("/api/v1/meters/tokens/query", params={"to": "2024-03-31T00:00:00Z"})
    body = r.json()
    assert "from" not in body
    assert body["to"] == "2024-03-31T00:00:00.000Z"
    assert rows(body) == [("2024-03-30T20:00:00.000Z", "2024-03-31T00:00:00.000Z", None, 12.5)]


async def test_no_bounds_windows_are_whole_and_unlimited(env: SimpleNamespace) -> None:
    # Every minute since 1970 would be more than 100,000 windows: without bounds there is no such limit.
    r = await env.client.get("/api/v1/meters/tokens/query", params={"windowSize": "MINUTE"})
    assert r.status_code == 200, r.text
    assert rows(r.json()) == [
        ("2024-03-30T20:00:00.000Z", "2024-03-30T20:01:00.000Z", None, 10),
        ("2024-03-30T23:00:00.000Z", "2024-03-30T23:01:00.000Z", None, 2.5),
        ("2024-04-01T02:00:00.000Z", "2024-04-01T02:01:00.000Z", None, 4),
    ]
    # The last window is whole (not cut at now), in the window time zone: Berlin days, DST included.
    r = await env.client.get(
        "/api/v1/meters/tokens/query", params={"windowSize": "DAY", "windowTimeZone": "Europe/Berlin"}
    )
    assert rows(r.json()) == [
        ("2024-03-29T23:00:00.000Z", "2024-03-30T23:00:00.000Z", None, 10),  # not clipped to an event
        ("2024-03-30T23:00:00.000Z", "2024-03-31T22:00:00.000Z", None, 2.5),  # 23 hours
        ("2024-03-31T22:00:00.000Z", "2024-04-01T22:00:00.000Z", None, 4),
    ]
    # An event far in the future is counted (no `to` means no upper bound, as in OpenMeter).
    later = T0 + timedelta(days=3000)
    insert(env.ch, "ns1", [{"id": "f", "time": later, "subject": "bob", "type": "prompt", "data": {"tokens": 1}}], "f")
    r = await env.client.get("/api/v1/meters/tokens/query", params={"windowSize": "MONTH", "subject": "bob"})
    assert [(w[0], w[1], w[3]) for w in rows(r.json())] == [
        ("2024-04-01T00:00:00.000Z", "2024-05-01T00:00:00.000Z", 4),
        ("2032-06-01T00:00:00.000Z", "2032-07-01T00:00:00.000Z", 1),
    ]
    # With both bounds, the explicit range keeps its limit and its clipped, exact edge windows.
    r = await env.client.get(
        "/api/v1/meters/tokens/query",
        params={"windowSize": "MINUTE", "from": "1970-01-01T00:00:00Z", "to": "2024-01-01T00:00:00Z"},
    )
    assert r.status_code == 400
    assert "MINUTE windows" in r.json()["detail"]


LIMIT = "99999999999999999999999999999.999999999"  # the largest Decimal(38, 9)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["12345678901234567890.123456789", "550.5"], "12345678901234568440.623456789"),  # 29 digits
        ([LIMIT], LIMIT),
        (["-" + LIMIT], "-" + LIMIT),
        (["0.000000001", "0.000000002"], "0.000000003"),
        (["-0.000000001"], "-0.000000001"),
        (["1e28", "-1e28", "0.5"], "0.5"),
    ],
)
async def test_decimals_come_back_digit_for_digit(env: SimpleNamespace, values: list[str], expected: str) -> None:
    events = [
        {"id": f"d{i}", "time": T0 + timedelta(seconds=i), "subject": "dec", "type": "prompt", "data": {"tokens": v}}
        for i, v in enumerate(values)
    ]
    insert(env.ch, "dec", events, "decimals")
    # TOKENS is an API meter of ns1: the same meter in the `dec` namespace, backfilled from these events.
    assert (await env.client.post("/api/v1/meters", json=TOKENS, headers={"x-ns": "dec"})).status_code == 201
    r = await env.client.get("/api/v1/meters/tokens/query", headers={"x-ns": "dec"})
    assert r.status_code == 200, r.text
    assert f'"value":{expected},'.encode() in r.content, r.text
    # Entitlements and meters render through the same function: the same usage, the same digits.
    usage = await ClickHouseUsageReader(env.service).usage("dec", "tokens", "dec", {}, T0, T0 + timedelta(days=1))
    assert decimal_text(usage) == expected


async def test_query_as_csv(env: SimpleNamespace) -> None:
    r = await env.client.get(
        "/api/v1/meters/tokens/query",
        params=[("groupBy", "subject"), ("groupBy", "model"), ("windowSize", "HOUR")],
        headers={"accept": "text/csv"},
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == "attachment; filename=tokens.csv"
    assert r.text == (
        "window_start,window_end,subject,model,value\n"
        "2024-03-30T20:00:00Z,2024-03-30T21:00:00Z,alice,a,10\n"
        "2024-03-30T23:00:00Z,2024-03-31T00:00:00Z,alice,b,2.5\n"
        "2024-04-01T02:00:00Z,2024-04-01T03:00:00Z,bob,a,4\n"
    )
    r = await env.client.post(
        "/api/v1/meters/tokens/query",
        json={"from": "2024-03-30T20:00:00.5Z", "to": "2024-03-31T00:00:00Z"},
        headers={"accept": "text/csv; charset=utf-8"},
    )
    assert r.text == "window_start,window_end,value\n2024-03-30T20:00:00.500Z,2024-03-31T00:00:00Z,2.5\n"
    # JSON stays the default, also for a list that does not start with text/csv
    r = await env.client.get("/api/v1/meters/tokens/query", headers={"accept": "application/json, text/csv"})
    assert r.json()["data"][0]["value"] == 16.5


async def test_group_by_values(env: SimpleNamespace) -> None:
    c = env.client
    url = "/api/v1/meters/tokens/group-by/model/values"
    assert (await c.get(url, params={"from": "2024-03-30T00:00:00Z"})).json() == ["a", "b"]
    # bounds off the minute are exact: alice's "b" event is at 23:00:05
    assert (await c.get(url, params={"from": "2024-03-30T23:00:05Z", "to": "2024-03-30T23:00:06Z"})).json() == ["b"]
    assert (await c.get(url, params={"from": "2024-03-30T23:00:06Z", "to": "2024-04-01T00:00:00Z"})).json() == []
    assert (await c.get(url, params={"to": "2024-03-30T21:00:00Z"})).json() == ["a"]
    # without bounds: the last 24 hours before now (the service clock is T0 + 5 days)
    assert (await c.get(url)).json() == []
    recent = T0 + timedelta(days=5) - timedelta(hours=1)
    insert(env.ch, "ns1", [{"id": "r", "time": recent, "subject": "c", "type": "prompt", "data": {"tokens": 1}}], "r")
    assert (await c.get(url)).json() == [""]  # no model in the event: the empty group value, as in the query
    r = await c.get("/api/v1/meters/tokens/group-by/colour/values")
    assert r.status_code == 400
    assert "unknown group-by key" in r.json()["detail"]
    assert (await c.get("/api/v1/meters/nope/group-by/model/values")).status_code == 404
    assert (await c.get(url, params={"search": "a"})).status_code == 400


async def test_put_updates_names_and_rebuilds_for_new_group_by_keys(env: SimpleNamespace) -> None:
    c = env.client
    await env.service.wait_backfills()  # keys change once the meter is READY (test_meter_backfill.py)
    assert (await c.get("/api/v1/meters/tokens")).json()["status"] == "READY"
    routes = f"SELECT rollup_id FROM `{env.ch.database}`.meter_routes ORDER BY rollup_id"
    before = env.ch.rows(routes)
    r = await c.put(
        "/api/v1/meters/tokens", json={**{"groupBy": TOKENS["groupBy"]}, "name": "Tokens", "metadata": {"a": "b"}}
    )
    assert r.status_code == 200, r.text
    assert (r.json()["name"], r.json()["metadata"], r.json()["groupBy"]) == ("Tokens", {"a": "b"}, {"model": "$.model"})
    assert (await c.get("/api/v1/meters/tokens")).json()["name"] == "Tokens"
    assert env.ch.rows(routes) == before  # names and metadata: no rebuild
    # A new key: rebuilt from every stored event, then counted live.
    r = await c.put("/api/v1/meters/tokens", json={"groupBy": {"model": "$.model", "size": "$.size"}})
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "tokens"  # OpenMeter: a PUT without name names the meter by its slug
    assert env.ch.rows(routes) != before
    later = T0 + timedelta(days=1)
    event = {"id": "s", "time": later, "subject": "carol", "type": "prompt", "data": {"tokens": 3, "size": "xl"}}
    insert(env.ch, "ns1", [event], "sized")
    r = await c.get("/api/v1/meters/tokens/query", params=[("groupBy", "size")])
    assert sorted((d["groupBy"]["size"], d["value"]) for d in r.json()["data"]) == [("", 16.5), ("xl", 3)]
    r = await c.get("/api/v1/meters/tokens/query", params=[("groupBy", "model"), ("filterGroupBy[size]", "xl")])
    assert [(d["groupBy"]["model"], d["value"]) for d in r.json()["data"]] == [("", 3)]
    # Removing a key: refused while a feature uses the meter, done otherwise.
    env.guard.used["ns1/tokens"] = ["gpt"]
    r = await c.put("/api/v1/meters/tokens", json={"groupBy": {"size": "$.size"}})
    assert r.status_code == 409
    assert "model" in r.json()["detail"]
    assert "gpt" in r.json()["detail"]
    r = await c.put("/api/v1/meters/tokens", json={"groupBy": {"model": "$.model", "size": "$.size", "x": "$.x"}})
    assert r.status_code == 200, r.text  # adding is always possible
    env.guard.used.clear()
    r = await c.put("/api/v1/meters/tokens", json={"groupBy": {"size": "$.size"}})
    assert r.status_code == 200, r.text
    r = await c.get("/api/v1/meters/tokens/query", params=[("groupBy", "model")])
    assert r.status_code == 400
    assert len(env.ch.rows(routes)) == len(before)  # one build per meter is routed
    # What cannot change, and config-file meters
    r = await c.put("/api/v1/meters/tokens", json={"aggregation": "COUNT"})
    assert r.status_code == 400
    assert "aggregation" in r.json()["detail"]
    assert (await c.put("/api/v1/meters/calls", json={"name": "x"})).status_code == 409
    assert (await c.put("/api/v1/meters/nope", json={"name": "x"})).status_code == 404


async def test_put_rebuild_clickhouse_refuses_keeps_the_live_meter(
    env: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aggregator import routing

    await env.service.wait_backfills()
    real = routing.meter_view_ddl
    monkeypatch.setattr(
        routing,
        "meter_view_ddl",
        lambda db, m, *a: real(db, m, *a).replace("SELECT", "SELEKT", 1) if "size" in m.group_by else real(db, m, *a),
    )
    r = await env.client.put("/api/v1/meters/tokens", json={"groupBy": {"model": "$.model", "size": "$.size"}})
    assert r.status_code == 400, r.text
    monkeypatch.undo()
    meter = (await env.client.get("/api/v1/meters/tokens")).json()
    assert meter["groupBy"] == {"model": "$.model"}
    r = await env.client.get("/api/v1/meters/tokens/query", params=[("groupBy", "model")])
    assert sorted((d["groupBy"]["model"], d["value"]) for d in r.json()["data"]) == [("a", 14), ("b", 2.5)]
    assert len(env.ch.rows(f"SELECT rollup_id FROM `{env.ch.database}`.meter_routes")) == 2  # tokens, calls
