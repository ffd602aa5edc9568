"""Rollups are exact: for random streams, meters and windows, the rollup answer equals the raw answer.

Streams include invalid values (NaN, inf, missing, non-numeric, too precise) and retried inserts with
the same dedupe token; windows have bounds off the minute, every window size and DST time zones.
"""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator import sql
from aggregator.meter import Meter, WindowSize, parse_meter, parse_number, value_error
from aggregator.query import shape_rows
from aggregator.repository import ClickHouseMeterRepository
from aggregator.roller import ClickHouseRoller
from aggregator.usage import ceil_to_millisecond
from common.clickhouse import ClickHouse
from common.cloudevents import MAX_EVENT_TIME, MIN_EVENT_TIME
from tests.support.meter_events import insert

pytestmark = pytest.mark.integration

BASE = datetime(2024, 3, 30, 22, 0, tzinfo=UTC)  # spans the Europe/Berlin DST change of 2024-03-31

METER_BODIES: list[dict[str, Any]] = [
    {"slug": "m_sum", "aggregation": "SUM", "eventType": "t", "valueProperty": "$.v", "groupBy": {"g": "$.g"}},
    {"slug": "m_count", "aggregation": "COUNT", "eventType": "t", "groupBy": {"g": "$.g"}},
    {"slug": "m_unique", "aggregation": "UNIQUE_COUNT", "eventType": "t", "valueProperty": "$.u"},
    {"slug": "m_avg", "aggregation": "AVG", "eventType": "t", "valueProperty": "$.v"},
    {"slug": "m_min", "aggregation": "MIN", "eventType": "t", "valueProperty": "$.v", "groupBy": {"g": "$.g"}},
    {"slug": "m_max", "aggregation": "MAX", "eventType": "t", "valueProperty": "$['v']"},
    {"slug": "m_latest", "aggregation": "LATEST", "eventType": "t", "valueProperty": "$.v", "groupBy": {"g": "$.g"}},
    {"slug": "m_nested", "aggregation": "SUM", "eventType": "t", "valueProperty": "$.n.a[1]"},
]

# Minutes and milliseconds drawn apart, so shrinking does not crowd everything into the first minute.
instants = st.builds(
    lambda m, ms: BASE + timedelta(minutes=m, milliseconds=ms),
    st.integers(0, 4 * 24 * 60),
    st.sampled_from([0, 0, 1, 59_999]) | st.integers(0, 59_999),
)

values = st.one_of(
    st.integers(-(10**12), 10**12),
    st.decimals(min_value=-1000, max_value=1000, places=3, allow_nan=False).map(str),
    st.sampled_from(
        [
            "NaN",
            "inf",
            "-Infinity",
            "abc",
            "",
            "1e3",
            "0.0000000001",
            "1e-400",
            "-2.5e-30",
            "0e5",
            "-0.0",
            "1.5E+2",
            None,
            True,
            "12 ",
        ]
    ),
    st.floats(allow_nan=True, allow_infinity=False, width=32),
)


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    data: dict[str, Any] = {}
    v = draw(values)
    if v is not None or draw(st.booleans()):
        data["v"] = v
    if draw(st.booleans()):
        data["g"] = draw(st.sampled_from(["a", "b", 1, None]))
    data["u"] = draw(st.sampled_from(["x", "y", "z", 1, 2]))
    if draw(st.booleans()):
        data["n"] = {"a": [draw(values), draw(values)]}
    return {
        "time": draw(instants),
        "subject": draw(st.sampled_from(["s1", "s2", "s3"])),
        "type": draw(st.sampled_from(["t", "t", "t", "other"])),
        "data": data,
    }


def answer(ch: ClickHouse, q: sql.Query, *, raw: bool, tail: bool = True) -> list[tuple[Any, ...]]:
    """The query's rows from raw events alone, or as the service reads them: rollups for the events stored
    before the roller's mark plus the raw tail after it (`tail=False`: the rollups alone)."""
    if raw:
        text, params = sql.raw_query(ch.database, q)
    else:
        mark = ClickHouseRoller(ch).marks().done if tail else None
        text, params = sql.build_query(ch.database, q, stored_from=mark)
    rows = shape_rows(q, ch.rows(text, parameters=params))
    return [(r.window_start, r.window_end, r.subject, tuple(sorted(r.group_by.items())), r.value) for r in rows]


def _minute(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


def span_reference(meter: Meter, stream: list[dict[str, Any]], q: sql.Query) -> list[tuple[Any, ...]]:
    """Unwindowed rows of a SUM meter per subject as OpenMeter answers them: a given bound is echoed, a
    missing one is the minute of the subject's first event / the minute after its last event."""
    out = []
    for subject in sorted({e["subject"] for e in stream}):
        mine = [
            e
            for e in stream
            if e["type"] == meter.event_type
            and e["subject"] == subject
            and q.start <= e["time"] < q.end
            and value_error(meter, e["data"]) is None
        ]
        if not mine:
            continue
        with localcontext() as ctx:
            ctx.prec = 80
            total = sum((parse_number(e["data"]["v"]) for e in mine), Decimal(0))
        ws = q.start if q.from_given else _minute(min(e["time"] for e in mine))
        we = q.end if q.to_given else _minute(max(e["time"] for e in mine)) + timedelta(minutes=1)
        out.append((ws, we, subject, (), total))
    return out


@pytest.fixture
def repo(clickhouse: ClickHouse) -> ClickHouseMeterRepository:
    r = ClickHouseMeterRepository(clickhouse)
    r.migrate()
    return r


def make_meters(repo: ClickHouseMeterRepository) -> list[Meter]:
    meters = [parse_meter(b, meter_id=uuid.uuid4().hex, namespace=None) for b in METER_BODIES]
    repo.reconcile(meters)
    return meters


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    stream=st.lists(events(), min_size=1, max_size=40),
    batches=st.integers(1, 4),
    retries=st.lists(st.integers(0, 3), max_size=3),
    rolls=st.lists(st.booleans(), min_size=5, max_size=5),
    windows=st.lists(
        st.tuples(
            instants,
            instants,
            st.sampled_from([None, *WindowSize]),
            st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]),
            st.booleans(),
            st.sampled_from([(True, True), (True, True), (True, False), (False, True), (False, False)]),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_rollup_answer_equals_raw_answer(
    clickhouse: ClickHouse,
    repo_meters: tuple[ClickHouseMeterRepository, list[Meter]],
    stream: list[dict[str, Any]],
    batches: int,
    retries: list[int],
    rolls: list[bool],
    windows: list[Any],
) -> None:
    repo, meters = repo_meters
    namespace = "ns_" + uuid.uuid4().hex[:10]
    for i, e in enumerate(stream):
        e["id"] = f"e{i}"
    chunks = [stream[i::batches] for i in range(batches)]
    for i, chunk in enumerate(chunks):
        if chunk:
            insert(clickhouse, namespace, chunk, f"{namespace}:{i}")
        if rolls[i]:  # the roller runs between some inserts: part in the rollups, part in the raw tail
            repo.roller.roll_once()
    for r in retries:  # a retried insert: same rows, same token -> dropped by the raw table
        if r < len(chunks) and chunks[r]:
            insert(clickhouse, namespace, chunks[r], f"{namespace}:{r}")
    rolled_up = rolls[4]
    if rolled_up:
        repo.roller.roll_once()  # everything stored is in the rollups: they alone must answer
    for a, b, window, tz, by_group, (from_given, to_given) in windows:
        start, end = min(a, b), max(a, b) + timedelta(milliseconds=1)
        # A bound not given is the whole event range (OpenMeter): whole windows, rows spanning their events.
        q_start = start if from_given else MIN_EVENT_TIME
        q_end = end if to_given else MAX_EVENT_TIME
        for meter in meters:
            group_by = ("g",) if by_group and "g" in meter.group_by else ()
            q = sql.Query(
                meter=meter,
                namespace=namespace,
                start=q_start,
                end=q_end,
                window=window,
                tz=tz,
                group_by=group_by,
                group_subject=True,
                from_given=from_given,
                to_given=to_given,
            )
            got_rows = answer(clickhouse, q, raw=False)
            assert got_rows == answer(clickhouse, q, raw=True), (meter.slug, window, tz)
            if rolled_up:
                assert answer(clickhouse, q, raw=False, tail=False) == got_rows, (meter.slug, window, tz)
            if meter is meters[0] and sql.spans_events(q) and not group_by:
                # Python reference: a row per subject, spanning the minutes of its counted events.
                assert got_rows == span_reference(meter, stream, q), (from_given, to_given)
            # One subject's total takes the flat single-row SQL (no GROUP BY): it must agree with the
            # grouped shape of the same query, for every aggregation, and be absent when there is no data.
            one = sql.Query(meter=meter, namespace=namespace, start=start, end=end, subjects=("s1",))
            flat = answer(clickhouse, one, raw=False)
            assert flat == answer(clickhouse, one, raw=True), meter.slug
            grouped = answer(clickhouse, dataclasses.replace(one, group_subject=True), raw=False)
            assert [r[4] for r in flat] == [r[4] for r in grouped], meter.slug
            assert answer(clickhouse, dataclasses.replace(one, hour_tier=False), raw=False) == flat, meter.slug
        # The SQL validity rule agrees with the Python one (GET /api/v1/events explains skipped events).
        whole = sql.Query(meter=meters[0], namespace=namespace, start=BASE, end=BASE + timedelta(days=5))
        expected = [
            parse_number(e["data"]["v"])
            for e in stream
            if e["type"] == "t" and value_error(meters[0], e["data"]) is None
        ]
        got = answer(clickhouse, whole, raw=False)
        with localcontext() as ctx:
            ctx.prec = 80
            total = sum(expected, Decimal(0)) if expected else None
        assert (got[0][4] if got else None) == total
        # Cuts a millisecond before some events: inside their second, where only exact bucketing is right.
        near = [e["time"] - timedelta(milliseconds=1) for e in stream if e["subject"] == "s1"][:3]
        cuts = (start, end, start + (end - start) / 3, start + (end - start) / 2, *near)
        bounds = tuple(sorted({ceil_to_millisecond(b) for b in cuts if start <= b <= end}))
        q = sql.Query(
            meter=meters[0], namespace=namespace, start=bounds[0], end=bounds[-1], boundaries=bounds, subjects=("s1",)
        )
        windowed = answer(clickhouse, q, raw=False)
        assert windowed == answer(clickhouse, q, raw=True)
        with localcontext() as ctx:
            ctx.prec = 80
            in_range = [
                parse_number(e["data"]["v"])
                for e in stream
                if e["type"] == "t"
                and e["subject"] == "s1"
                and bounds[0] <= e["time"] < bounds[-1]
                and value_error(meters[0], e["data"]) is None
            ]
            assert sum((w[4] for w in windowed), Decimal(0)) == sum(in_range, Decimal(0))
            # Each window holds exactly its own events (a Python reference per window, not only the total).
            per_window = {w[0]: w[4] for w in windowed}
            for lo, hi in itertools.pairwise(bounds):
                mine = [
                    parse_number(e["data"]["v"])
                    for e in stream
                    if e["type"] == "t"
                    and e["subject"] == "s1"
                    and lo <= e["time"] < hi
                    and value_error(meters[0], e["data"]) is None
                ]
                assert per_window.get(lo, Decimal(0)) == sum(mine, Decimal(0)), (lo, hi)


@pytest.fixture
def repo_meters(repo: ClickHouseMeterRepository) -> tuple[ClickHouseMeterRepository, list[Meter]]:
    return repo, make_meters(repo)


def test_sum_matches_python_reference(clickhouse: ClickHouse, repo: ClickHouseMeterRepository) -> None:
    meter = make_meters(repo)[0]
    evs = [
        {"id": "1", "time": BASE, "subject": "s", "type": "t", "data": {"v": "1.25"}},
        {"id": "2", "time": BASE + timedelta(seconds=30), "subject": "s", "type": "t", "data": {"v": 2}},
        {"id": "3", "time": BASE + timedelta(minutes=5), "subject": "s", "type": "t", "data": {"v": "NaN"}},
        {"id": "4", "time": BASE + timedelta(minutes=5), "subject": "s", "type": "t", "data": {}},
        {"id": "5", "time": BASE + timedelta(minutes=61), "subject": "s", "type": "t", "data": {"v": "0.000000001"}},
    ]
    insert(clickhouse, "ns", evs, "tok")
    q = sql.Query(meter=meter, namespace="ns", start=BASE, end=BASE + timedelta(hours=3), window=WindowSize.HOUR)
    got = [(r[0], r[4]) for r in answer(clickhouse, q, raw=False)]
    assert got == [(BASE, Decimal("3.25")), (BASE + timedelta(hours=1), Decimal("0.000000001"))]


def test_meter_created_after_events_covers_the_past(clickhouse: ClickHouse, repo: ClickHouseMeterRepository) -> None:
    evs = [
        {"id": str(i), "time": BASE + timedelta(minutes=i), "subject": "s", "type": "t", "data": {"v": i}}
        for i in range(10)
    ]
    insert(clickhouse, "ns", evs[:5], "before")
    meter = make_meters(repo)[0]
    insert(clickhouse, "ns", evs[5:], "after")
    insert(clickhouse, "ns", evs[5:], "after")  # retried: counted once
    repo.roller.roll_once()
    q = sql.Query(meter=meter, namespace="ns", start=BASE, end=BASE + timedelta(days=1))
    assert [r[4] for r in answer(clickhouse, q, raw=False)] == [Decimal(45)]
    rows = clickhouse.rows(f"SELECT sumMerge(value) FROM {sql.qualified(clickhouse.database, meter.rollup_table)}")
    assert rows[0][0] == Decimal(45)
    repo.reconcile([meter])  # idempotent: nothing rebuilt or double counted
    assert [r[4] for r in answer(clickhouse, q, raw=False)] == [Decimal(45)]
    repo.reconcile([])  # removed from config: dropped
    assert repo.live() == []


def test_backfill_month_by_month_covers_every_month(clickhouse: ClickHouse, repo: ClickHouseMeterRepository) -> None:
    """A meter created over events spanning several months backfills each month once, none missed."""
    evs = [
        {
            "id": f"m{i}",
            "time": BASE + timedelta(days=17 * i, minutes=i),
            "subject": "s",
            "type": "t",
            "data": {"v": i + 1},
        }
        for i in range(8)
    ]  # March 2024 to July 2024
    insert(clickhouse, "ns", evs, "months")
    meter = make_meters(repo)[0]
    q = sql.Query(
        meter=meter,
        namespace="ns",
        start=BASE - timedelta(days=1),
        end=BASE + timedelta(days=200),
        window=WindowSize.MONTH,
    )
    from_rollups = answer(clickhouse, q, raw=False)
    assert from_rollups == answer(clickhouse, q, raw=True)
    assert len(from_rollups) == len({(e["time"].year, e["time"].month) for e in evs}) > 3
    assert sum(r[4] for r in from_rollups) == sum(Decimal(i + 1) for i in range(8))
