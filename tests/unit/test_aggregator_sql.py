from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator import routing, sql
from aggregator.meter import Aggregation, WindowSize, parse_meter
from aggregator.query import InvalidQuery, QueryParams, decimal_text, params_from_mapping, to_query
from common.cloudevents import MAX_EVENT_TIME, MIN_EVENT_TIME

M = parse_meter(
    {"slug": "t", "aggregation": "SUM", "eventType": "e", "valueProperty": "$.v", "groupBy": {"g": "$.g"}},
    meter_id="abc",
    namespace="ns",
)
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def q(start: datetime, end: datetime, boundaries: tuple[datetime, ...] | None = None) -> sql.Query:
    return sql.Query(meter=M, namespace="ns", start=start, end=end, boundaries=boundaries)


def test_aligned_range_is_all_rollup() -> None:
    assert sql.plan_edges(q(T0, T0 + timedelta(hours=1))) == (T0, T0 + timedelta(hours=1), [], [])


def test_unaligned_edges_come_from_raw_events() -> None:
    s, e = T0 + timedelta(seconds=10), T0 + timedelta(minutes=5, seconds=30)
    r_from, r_to, skip, raw = sql.plan_edges(q(s, e))
    assert (r_from, r_to, skip) == (T0 + timedelta(minutes=1), T0 + timedelta(minutes=5), [])
    assert raw == [(s, T0 + timedelta(minutes=1)), (T0 + timedelta(minutes=5), e)]


def test_range_inside_one_minute_is_all_raw() -> None:
    s, e = T0 + timedelta(seconds=10), T0 + timedelta(seconds=20)
    r_from, r_to, _, raw = sql.plan_edges(q(s, e))
    assert r_from > r_to
    assert raw == [(s, e)]


@given(st.lists(st.integers(0, 10_000_000), min_size=2, max_size=6, unique=True))
def test_edges_partition_the_range(points: list[int]) -> None:
    """Rollup minutes and raw intervals cover [start, end) exactly once, and no window straddles a minute."""
    bounds = tuple(T0 + timedelta(milliseconds=p) for p in sorted(points))
    r_from, r_to, skip, raw = sql.plan_edges(q(bounds[0], bounds[-1], bounds))
    pieces = list(raw)
    m = r_from
    while m < r_to:
        if m not in skip:
            pieces.append((m, m + timedelta(minutes=1)))
            assert not any(m < b < m + timedelta(minutes=1) for b in bounds)
        m += timedelta(minutes=1)
    pieces.sort()
    assert pieces[0][0] == bounds[0]
    assert pieces[-1][1] == bounds[-1]
    assert all(a[1] == b[0] for a, b in itertools.pairwise(pieces))


def test_rollup_ddl_keeps_dedupe_window_and_exact_types() -> None:
    for fam in routing.FAMILIES:
        ddl = routing.rollups_table_ddl("db", fam)
        assert "non_replicated_deduplication_window" in ddl
        assert "Float" not in ddl
    assert "Decimal(38, 9)" in routing.rollups_table_ddl("db", routing.FAMILIES[0])
    view = routing.meter_view_ddl("db", M, "abc_1", sql.MINUTE)
    assert "groups[1] AS `group_g`" in view
    assert "value_sum AS `value`" in view
    assert "rollup_id IN ('abc_1', 'abc_1_b') AND tier = 0" in view  # the router's rows and the backfill's
    assert not [stmt for stmt in routing.schema_ddl("db") if "Float" in stmt]


def test_router_and_backfill_split_on_the_cutover() -> None:
    cut = datetime(2024, 1, 1, 0, 0, 1, 500000, tzinfo=UTC)
    router = routing.router_select("db")
    assert "e.inserted_at >= r.cutover" in router
    # The roller reads one range of stored events; nothing on `events` counts at insert.
    assert "inserted_at >= {lo:DateTime64(3, 'UTC')} AND inserted_at < {hi:DateTime64(3, 'UTC')}" in router
    assert routing.roll_sql("db").startswith("INSERT INTO `db`.`meter_routed` SELECT")
    assert not [stmt for stmt in routing.schema_ddl("db") if "MATERIALIZED VIEW" in stmt]
    route = dict(zip(routing.ROUTE_COLUMNS, routing.route_row(M, cut), strict=True))
    assert route["cutover"] == cut
    assert route["rollup_id"] == routing.rollup_id(M, cut) == "abc_1704067201500"
    assert route["value_path"] == ["kv"]
    assert route["group_paths"] == [["kg"]]
    backfill = routing.backfill_sql("db", M, cut, sql.MINUTE)
    assert "inserted_at < toDateTime64('2024-01-01 00:00:01.500', 3, 'UTC')" in backfill
    assert "'abc_1704067201500_b' AS rollup_id" in backfill  # apart from the router's rows (a resume forgets them)


def test_router_paths_are_the_static_paths() -> None:
    assert routing.encode_path(("a", 0, -1, "b")) == ["ka", "i1", "i-1", "kb"]


def test_literals_are_escaped() -> None:
    assert sql.literal("it's \\ x") == "'it\\'s \\\\ x'"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (QueryParams(start="2024-01-02T00:00:00Z", end="2024-01-01T00:00:00Z"), "from"),
        (QueryParams(start="2024-01-01T00:00:00Z", end="2024-01-01T00:00:00Z"), "from"),
        (QueryParams(start="yesterday"), "from"),
        (QueryParams(window_time_zone="Mars/Olympus"), "windowTimeZone"),
        (QueryParams(window_size="WEEK"), "windowSize"),
        (QueryParams(group_by=("nope",)), "groupBy"),
        (QueryParams(filter_group_by=(("nope", "x"),)), "filterGroupBy[nope]"),
    ],
)
def test_bad_queries_are_clear_400s(params: QueryParams, field: str) -> None:
    with pytest.raises(InvalidQuery) as exc:
        to_query(M, "ns", params)
    assert exc.value.fields["field"] == field


def test_query_string_parsing_keeps_repeats() -> None:
    p = params_from_mapping(
        [
            ("subject", "a"),
            ("subject", "b"),
            ("groupBy", "g"),
            ("filterGroupBy[g]", "x"),
            ("windowSize", "HOUR"),
            ("windowTimeZone", "Europe/Berlin"),
        ]
    )
    assert p.subjects == ("a", "b")
    assert p.group_by == ("g",)
    assert p.filter_group_by == (("g", "x"),)
    query = to_query(M, "ns", p)
    assert query.group_subject
    assert query.tz == "Europe/Berlin"
    # No from/to: the whole event range, as OpenMeter (no 1970 start in the answer, no cut at now).
    assert (query.start, query.end) == (MIN_EVENT_TIME, MAX_EVENT_TIME)
    assert not query.from_given
    assert not query.to_given


def test_decimal_text() -> None:
    assert [decimal_text(Decimal(x)) for x in ("12.500000000", "100", "0E-9", "-0.5")] == ["12.5", "100", "0", "-0.5"]


def test_tiers_use_hours_where_whole_and_minutes_at_the_edges() -> None:
    s, e = T0 + timedelta(minutes=10, seconds=5), T0 + timedelta(hours=5, minutes=3)
    spans, skip, raw = sql.plan_tiers(
        sql.Query(meter=M, namespace="ns", start=s, end=e, window=WindowSize.DAY, tz="Europe/Berlin")
    )
    assert [(t.column, a, b) for t, a, b in spans] == [
        ("minute", T0 + timedelta(minutes=11), T0 + timedelta(hours=1)),
        ("hour", T0 + timedelta(hours=1), T0 + timedelta(hours=5)),
        ("minute", T0 + timedelta(hours=5), e),
    ]
    assert skip == []
    assert raw == [(s, T0 + timedelta(minutes=11))]


@pytest.mark.parametrize(
    ("window", "tz", "hours"),
    [
        (None, "UTC", True),
        (WindowSize.MINUTE, "UTC", False),
        (WindowSize.HOUR, "Asia/Kolkata", False),
        (WindowSize.DAY, "America/New_York", True),
    ],
)
def test_hour_tier_only_when_windows_start_on_utc_hours(window: WindowSize | None, tz: str, hours: bool) -> None:
    query = sql.Query(meter=M, namespace="ns", start=T0, end=T0 + timedelta(days=2), window=window, tz=tz)
    assert sql.hour_tier_allowed(query) is hours


def test_one_subject_total_reads_each_table_once_and_merges_flat() -> None:
    """Each table read costs fixed planning time on chdb: the minute spans before and after the hours are
    one read (OR'ed ranges), and a single-window total is merged without GROUP BY / ORDER BY."""
    s, e = T0 + timedelta(minutes=10, seconds=5), T0 + timedelta(days=30, minutes=3, milliseconds=7)
    text, params = sql.build_query("db", sql.Query(meter=M, namespace="ns", start=s, end=e, subjects=("a",)))
    assert text.count("`meter_rollup_abc`") == 1
    assert text.count("`meter_rollup_abc_hour`") == 1
    assert text.count("`events`") == 1
    assert " OR " in text.split("`meter_rollup_abc`")[1].split("UNION ALL")[0]
    assert "HAVING count() > 0" in text
    assert "ORDER BY" not in text
    assert params["rto0_0"] == T0 + timedelta(hours=1)
    assert params["rfrom0_1"] == T0 + timedelta(days=30)
    grouped, _ = sql.build_query("db", sql.Query(meter=M, namespace="ns", start=s, end=e, group_subject=True))
    assert "ORDER BY" in grouped
    assert "HAVING" not in grouped


def test_hour_tier_only_when_it_saves_enough_rows() -> None:
    sparse = sql.TierStats(minute_rows=10_000_000, hour_rows=2_160_000, subjects=1000)  # ~8k rows saved a subject
    dense = sql.TierStats(minute_rows=130_000_000, hour_rows=2_160_000, subjects=1000)  # ~128k
    assert not sql.hour_tier_pays(sparse, 1)
    assert sql.hour_tier_pays(sparse, 10)
    assert sql.hour_tier_pays(dense, 1)
    assert sql.hour_tier_pays(sparse, 0)  # all subjects
    assert sql.hour_tier_pays(sql.TierStats(0, 0, 0), 1)
    s, e = T0 + timedelta(minutes=10, seconds=5), T0 + timedelta(days=3, minutes=3)
    spans, _, raw = sql.plan_tiers(sql.Query(meter=M, namespace="ns", start=s, end=e, hour_tier=False))
    assert [(t.column, a, b) for t, a, b in spans] == [("minute", T0 + timedelta(minutes=11), e)]
    assert raw == [(s, T0 + timedelta(minutes=11))]


def test_family_views_are_created_with_their_first_meter_not_with_the_schema() -> None:
    assert not [
        stmt
        for stmt in routing.schema_ddl("db")
        if stmt.lstrip().startswith("CREATE MATERIALIZED VIEW") and "_mv" in stmt
    ]
    assert [f.table for f in routing.families_of([])] == []
    codes = [routing.AGG_CODE[Aggregation.LATEST], routing.AGG_CODE[Aggregation.AVG], routing.AGG_CODE[Aggregation.SUM]]
    assert [f.table for f in routing.families_of(codes)] == ["meter_rollups", "meter_rollups_latest"]


def test_the_raw_tail_covers_the_rollup_spans_for_events_stored_after_the_mark() -> None:
    mark = datetime(2024, 1, 2, tzinfo=UTC)
    s, e = T0 + timedelta(minutes=10, seconds=5), T0 + timedelta(days=3, minutes=3, seconds=2)
    q = sql.Query(meter=M, namespace="ns", start=s, end=e, window=WindowSize.DAY)
    without, _ = sql.build_query("db", q)
    text, params = sql.build_query("db", q, stored_from=mark)
    assert "inserted_at" not in without
    assert text.count("FROM `db`.`events`") == 2  # the edges, and the tail over the rollup spans
    assert params["tstored"] == mark
    spans, _, _ = sql.plan_tiers(q)
    assert (params["tlo0"], params["thi0"]) == (spans[0][1], spans[-1][2])
    # Minutes cut by a window boundary are read raw whole: the tail leaves them out.
    cut = dataclasses.replace(q, window=None, boundaries=(s, T0 + timedelta(hours=5, seconds=30), e))
    text, params = sql.build_query("db", cut, stored_from=mark)
    assert params["tskip"] == [T0 + timedelta(hours=5)]
    assert "toStartOfMinute(time) NOT IN {tskip:Array(DateTime('UTC'))}" in text
    # Nothing from the rollups (a range inside one minute): no tail either.
    inner = sql.Query(meter=M, namespace="ns", start=s, end=s + timedelta(seconds=10))
    assert "inserted_at" not in sql.build_query("db", inner, stored_from=mark)[0]
