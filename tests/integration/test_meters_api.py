"""The meters REST API and the usage reader on a real ClickHouse engine (chdb), through a tiny app that
sets the namespace the way metergate.app's auth middleware does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest

from aggregator.meter import parse_meter
from aggregator.usage import ClickHouseUsageReader
from common.clickhouse import ClickHouse
from common.cloudevents import CloudEvent
from tests.support.meter_events import insert
from tests.support.meters_app import T0, TOKENS, meters_app

pytestmark = pytest.mark.integration


@pytest.fixture
async def env(clickhouse: ClickHouse) -> AsyncIterator[SimpleNamespace]:
    async with meters_app(clickhouse) as e:
        yield e


async def test_create_backfills_and_queries_windows_across_dst(env: SimpleNamespace) -> None:
    c = env.client
    r = await c.post("/api/v1/meters", json=TOKENS)
    assert r.status_code == 201, r.text
    meter = r.json()
    assert meter["slug"] == "tokens"
    assert meter["groupBy"] == {"model": "$.model"}
    assert (await c.get(f"/api/v1/meters/{meter['id']}")).json()["slug"] == "tokens"
    assert {m["slug"] for m in (await c.get("/api/v1/meters")).json()} == {"tokens", "calls"}
    assert (await c.get("/api/v1/meters", headers={"x-ns": "other"})).json()[0]["slug"] == "calls"

    r = await c.get(
        "/api/v1/meters/tokens/query",
        params={
            "from": "2024-03-30T00:00:00Z",
            "to": "2024-04-02T00:00:00Z",
            "windowSize": "DAY",
            "windowTimeZone": "Europe/Berlin",
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert [(d["windowStart"], d["windowEnd"], d["value"]) for d in body["data"]] == [
        ("2024-03-30T00:00:00.000Z", "2024-03-30T23:00:00.000Z", 10),  # clipped to `from`, CET
        ("2024-03-30T23:00:00.000Z", "2024-03-31T22:00:00.000Z", 2.5),  # 23-hour day (DST starts)
        ("2024-03-31T22:00:00.000Z", "2024-04-01T22:00:00.000Z", 4),  # CEST
    ]
    assert body["windowSize"] == "DAY"
    assert body["from"] == "2024-03-30T00:00:00.000Z"

    r = await c.get(
        "/api/v1/meters/tokens/query",
        params=[("subject", "alice"), ("subject", "bob"), ("groupBy", "model"), ("filterGroupBy[model]", "a")],
    )
    assert sorted((d["subject"], d["groupBy"]["model"], d["value"]) for d in r.json()["data"]) == [
        ("alice", "a", 10),
        ("bob", "a", 4),
    ]

    # Bounds off the minute: only the second event (at +3h 5s) is inside [+3h 1s, +3h 6s).
    r = await c.post(
        "/api/v1/meters/tokens/query",
        json={"from": "2024-03-30T23:00:01Z", "to": "2024-03-30T23:00:06Z", "subject": ["alice"]},
    )
    assert [d["value"] for d in r.json()["data"]] == [2.5]

    assert (await c.get("/api/v1/meters/tokens/subjects")).json() == ["alice", "bob"]
    calls = await c.get("/api/v1/meters/calls/query")
    assert calls.json()["data"][0]["value"] == 4  # COUNT counts the NaN event too: COUNT has no value


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"from": "2024-03-31T00:00:00Z", "to": "2024-03-30T00:00:00Z"}, "must be before"),
        ({"groupBy": "colour"}, "unknown group-by key"),
        ({"filterGroupBy[colour]": "x"}, "unknown group-by key"),
        ({"windowTimeZone": "Mars/Base"}, "unknown time zone"),
        ({"windowSize": "FORTNIGHT"}, "windowSize"),
    ],
)
async def test_bad_queries_are_400(env: SimpleNamespace, params: dict[str, str], needle: str) -> None:
    await env.client.post("/api/v1/meters", json=TOKENS)
    r = await env.client.get("/api/v1/meters/tokens/query", params=params)
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/problem+json"
    assert needle in r.json()["detail"]


async def test_delete_rules(env: SimpleNamespace) -> None:
    c = env.client
    assert (await c.post("/api/v1/meters", json=TOKENS)).status_code == 201
    assert (await c.post("/api/v1/meters", json=TOKENS)).status_code == 409
    assert (await c.post("/api/v1/meters", json={**TOKENS, "slug": "calls"})).status_code == 409
    assert (await c.post("/api/v1/meters", json={**TOKENS, "aggregation": "COUNT"})).status_code == 400
    env.guard.used["ns1/tokens"] = ["gpt_tokens"]
    r = await c.delete("/api/v1/meters/tokens")
    assert r.status_code == 409
    assert "gpt_tokens" in r.json()["detail"]
    assert (await c.delete("/api/v1/meters/calls")).status_code == 409  # config-file meter
    env.guard.used.clear()
    assert (await c.delete("/api/v1/meters/tokens")).status_code == 204
    assert (await c.get("/api/v1/meters/tokens")).status_code == 404
    tables = env.ch.rows(
        "SELECT name, engine FROM system.tables WHERE database = {db:String} AND startsWith(name, 'meter_rollup_') "
        "ORDER BY name",
        parameters={"db": env.ch.database},
    )
    calls = (await env.service.get("ns1", "calls")).rollup_table
    assert [tuple(t) for t in tables] == [(calls, "View"), (calls + "_hour", "View")]  # only the config meter's
    # The router no longer routes the deleted meter's events; its rows are deleted (a background mutation).
    routes = env.ch.rows(f"SELECT rollup_id FROM `{env.ch.database}`.meter_routes")
    assert [r[0].split("_")[0] for r in routes] == [calls.removeprefix("meter_rollup_")]


async def test_usage_reader_and_validation_hook(env: SimpleNamespace) -> None:
    await env.client.post("/api/v1/meters", json=TOKENS)
    reader = ClickHouseUsageReader(env.service)
    assert await reader.usage("ns1", "tokens", "alice", {}, T0, T0 + timedelta(days=1)) == Decimal("12.5")
    assert await reader.usage("ns1", "tokens", "alice", {"model": "b"}, T0, T0 + timedelta(days=1)) == Decimal("2.5")
    bounds = [T0, T0 + timedelta(hours=3, seconds=5), T0 + timedelta(hours=3, seconds=5), T0 + timedelta(days=1)]
    assert await reader.usage_windows("ns1", "tokens", "alice", {}, bounds) == [Decimal(10), Decimal(0), Decimal("2.5")]
    assert await reader.stored_after("ns1", "tokens", "alice", before=T0, after=T0 - timedelta(days=1)) is False
    later = T0 + timedelta(hours=4)
    assert await reader.stored_after("ns1", "tokens", "alice", before=later, after=T0 - timedelta(days=1)) is True
    # Many subjects in one read: each subject's windows, as its own read gives them (subjects with none absent).
    wide = [T0, T0 + timedelta(hours=3, seconds=5), T0 + timedelta(days=1), T0 + timedelta(days=2)]
    by_subject = await reader.usage_by_subject("ns1", "tokens", ["alice", "bob", "nobody"], {}, wide)
    assert set(by_subject) == {"alice", "bob"}
    for subject, windows in by_subject.items():
        assert windows == await reader.usage_windows("ns1", "tokens", subject, {}, wide)
    assert await reader.usage_by_subject("ns1", "tokens", ["alice"], {"model": "b"}, wide) == {
        "alice": [Decimal(0), Decimal("2.5"), Decimal(0)]
    }
    assert await reader.usage_by_subject("ns1", "tokens", [], {}, wide) == {}
    ref = await env.service.get_meter("ns1", "tokens")
    assert ref is not None
    assert ref.group_by == {"model": "$.model"}
    bad = CloudEvent(id="x", source="s", type="prompt", subject="a", time=T0, data='{"tokens": "NaN"}')
    assert "tokens" in (env.service.event_validation_error("ns1", bad) or "")


async def test_usage_windows_with_sub_millisecond_bounds(env: SimpleNamespace) -> None:
    """Bounds with microseconds (an entitlement created at now()) hold exactly the events of [a, b)."""
    await env.client.post("/api/v1/meters", json=TOKENS)
    reader = ClickHouseUsageReader(env.service)
    us = timedelta(microseconds=1)
    second = T0 + timedelta(hours=3, seconds=5)  # alice's 2.5 tokens, at a whole millisecond
    end = T0 + timedelta(days=1, microseconds=7)
    bounds = [T0 - 500 * us, T0 + 123 * us, second - 1500 * us, second + 250 * us, end]
    assert await reader.usage_windows("ns1", "tokens", "alice", {}, bounds) == [
        Decimal(10),
        Decimal(0),
        Decimal("2.5"),
        Decimal(0),
    ]
    assert await reader.usage("ns1", "tokens", "alice", {}, T0 + us, T0 + timedelta(days=1)) == Decimal("2.5")
    # Boundaries inside one second, around an event off the whole second (raw events only, no rollup).
    odd = T0 + timedelta(hours=2, milliseconds=272)
    insert(
        env.ch,
        "ns1",
        [{"id": "5", "time": odd, "subject": "alice", "type": "prompt", "data": {"tokens": 7, "model": "a"}}],
        "odd-millisecond",
    )
    ms = timedelta(milliseconds=1)
    bounds = [odd - 17 * ms, odd, odd + ms, odd + 111 * ms]
    assert await reader.usage_windows("ns1", "tokens", "alice", {}, bounds) == [Decimal(0), Decimal(7), Decimal(0)]


# ---- a request must never break the service ----

HUGE_INDEX = "$.a[99999999999999999999999]"


async def test_an_unbuildable_path_is_a_400_and_leaves_nothing(env: SimpleNamespace) -> None:
    c = env.client
    r = await c.post("/api/v1/meters", json={**TOKENS, "slug": "bad", "valueProperty": HUGE_INDEX})
    assert r.status_code == 400, r.text
    assert "array index out of range" in r.json()["detail"]
    assert {m["slug"] for m in (await c.get("/api/v1/meters")).json()} == {"calls"}
    await env.service.start()  # a restart still works


async def test_a_create_clickhouse_refuses_is_all_or_nothing(
    env: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aggregator import routing

    real = routing.raw_view_ddl  # the views made before 201 (the rollup views come with the backfill)
    monkeypatch.setattr(routing, "raw_view_ddl", lambda *a, **k: real(*a, **k).replace("SELECT", "SELEKT", 1))
    r = await env.client.post("/api/v1/meters", json={**TOKENS, "slug": "refused"})
    assert r.status_code == 400, r.text
    assert "ClickHouse cannot build meter 'refused'" in r.json()["detail"]
    monkeypatch.undo()
    tables = {str(row[0]) for row in env.ch.rows(f"SHOW TABLES FROM `{env.ch.database}`")}
    assert not [t for t in tables if "refused" in t]
    await env.service.start()  # nothing left to rebuild at the next start
    assert {m["slug"] for m in (await env.client.get("/api/v1/meters")).json()} == {"calls"}
    r = await env.client.post("/api/v1/meters", json={**TOKENS, "slug": "refused"})  # the slug is free again
    assert r.status_code == 201, r.text


async def test_start_up_skips_a_meter_it_cannot_build_and_lists_it_failed(env: SimpleNamespace) -> None:
    """A meter stored by an older version with a path ClickHouse refuses used to stop every start."""
    c = env.client
    assert (await c.post("/api/v1/meters", json=TOKENS)).status_code == 201
    repo = env.service.repository
    env.ch.command(
        f"INSERT INTO `{env.ch.database}`.`meters` (namespace, slug, id, definition, state, cutover, created_at, "
        "version) VALUES ('ns1', 'old_bad', 'oldbad1', {d:String}, 'creating', now64(3), now64(3), 1)",
        parameters={
            "d": '{"slug":"old_bad","aggregation":"SUM","eventType":"prompt","valueProperty":"' + HUGE_INDEX + '"}'
        },
    )
    await env.service.start()  # does not raise
    listed = (await c.get("/api/v1/meters")).json()
    assert {m["slug"] for m in listed if m["status"] != "FAILED"} == {"tokens", "calls"}
    failed = [m for m in listed if m.get("status") == "FAILED"]
    assert [m["slug"] for m in failed] == ["old_bad"]
    assert "array index out of range" in failed[0]["statusReason"]
    assert repo.failed()  # and the working meters still answer
    r = await c.get("/api/v1/meters/tokens/query")
    assert r.status_code == 200, r.text


async def test_a_meter_clickhouse_refuses_at_start_is_failed_then_retried(
    env: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aggregator import routing

    repo = env.service.repository
    meter = parse_meter({**TOKENS, "slug": "later"}, meter_id="later1", namespace="ns1", created_at=T0)
    repo._write(meter, "creating", T0)  # half-created (e.g. killed mid-create)
    real = routing.raw_view_ddl  # the views made before 201 (the rollup views come with the backfill)
    monkeypatch.setattr(routing, "raw_view_ddl", lambda *a, **k: real(*a, **k).replace("SELECT", "SELEKT", 1))
    await env.service.start()  # does not raise
    failed = [m for m in (await env.client.get("/api/v1/meters")).json() if m.get("status") == "FAILED"]
    assert [m["slug"] for m in failed] == ["later"]
    assert "SELEKT" in failed[0]["statusReason"] or "Syntax" in failed[0]["statusReason"]
    monkeypatch.undo()
    await env.service.start()  # retried at the next start, and built
    listed = (await env.client.get("/api/v1/meters")).json()
    assert "later" in {m["slug"] for m in listed if m["status"] != "FAILED"}


async def test_meters_per_namespace_quota(env: SimpleNamespace) -> None:
    env.service.max_meters = 1
    assert (await env.client.post("/api/v1/meters", json=TOKENS)).status_code == 201
    r = await env.client.post("/api/v1/meters", json={**TOKENS, "slug": "second"})
    assert r.status_code == 409
    assert "METERGATE_QUOTAS__METERS_PER_NAMESPACE" in r.json()["detail"]
    # config-file meters do not count, and another namespace has its own room
    r = await env.client.post("/api/v1/meters", json={**TOKENS, "slug": "second"}, headers={"x-ns": "other"})
    assert r.status_code == 201


async def test_migrate_moves_a_meter_of_the_per_meter_design_to_the_router(env: SimpleNamespace) -> None:
    """A meter built before the router: a table and a materialized view per tier, marked ready."""
    repo = env.service.repository
    meter = parse_meter({**TOKENS, "slug": "old"}, meter_id="old1", namespace="ns1", created_at=T0)
    db = env.ch.database
    for suffix in ("", "_hour"):
        env.ch.command(f"CREATE TABLE `{db}`.meter_rollup_old1{suffix} (x UInt8) ENGINE = MergeTree ORDER BY x")
        env.ch.command(
            f"CREATE MATERIALIZED VIEW `{db}`.meter_rollup_old1{suffix}_mv TO `{db}`.meter_rollup_old1{suffix} "
            f"AS SELECT 1 AS x FROM `{db}`.events"
        )
    repo._write(meter, "ready", T0)
    await env.service.start()  # migrate + reconcile
    engines = env.ch.rows(
        "SELECT name, engine FROM system.tables WHERE database = {db:String} AND startsWith(name, 'meter_rollup_old1') "
        "ORDER BY name",
        parameters={"db": db},
    )
    assert [tuple(r) for r in engines] == [("meter_rollup_old1", "View"), ("meter_rollup_old1_hour", "View")]
    r = await env.client.get("/api/v1/meters/old/query", params={"groupBy": "subject"})
    assert sorted((d["subject"], d["value"]) for d in r.json()["data"]) == [("alice", 12.5), ("bob", 4)]


async def test_migrate_moves_a_database_that_counted_at_insert_to_the_roller(env: SimpleNamespace) -> None:
    """A database of the design that counted at insert (a routing view on events, its routes and rows): the
    view goes, the meters are rebuilt under the roller, and their answers stay exact."""
    db = env.ch.database
    r = await env.client.post("/api/v1/meters", json={**TOKENS, "slug": "moved"})
    assert r.status_code == 201
    await env.service.wait_backfills()
    before = (await env.client.get("/api/v1/meters/moved/query", params={"groupBy": "subject"})).json()["data"]
    assert before
    # What that design left: the view on events, and rows its builds counted (here: a stray rollup row).
    env.ch.command(
        f"CREATE MATERIALIZED VIEW `{db}`.meter_router TO `{db}`.meter_routed AS SELECT '' AS rollup_id, "
        f"toUInt8(0) AS agg, namespace, subject, time, source, id, CAST([], 'Array(String)') AS groups, "
        f"toDecimal128(0, 9) AS v, "
        f"'' AS text FROM `{db}`.events WHERE 0"
    )
    old = env.ch.rows(f"SELECT rollup_id FROM `{db}`.meter_routes WHERE startsWith(rollup_id, {{p:String}})",
                      parameters={"p": r.json()["id"] + "_"})  # fmt: skip
    await env.service.start()  # migrate + reconcile
    tables = {str(t[0]) for t in env.ch.rows("SELECT name FROM system.tables WHERE database = {db:String}",
                                              parameters={"db": db})}  # fmt: skip
    assert "meter_router" not in tables
    new = env.ch.rows(f"SELECT rollup_id FROM `{db}`.meter_routes WHERE startsWith(rollup_id, {{p:String}})",
                      parameters={"p": r.json()["id"] + "_"})  # fmt: skip
    assert new
    assert new != old  # a new build, under the roller
    after = (await env.client.get("/api/v1/meters/moved/query", params={"groupBy": "subject"})).json()["data"]
    assert after == before
