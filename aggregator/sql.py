"""ClickHouse SQL for meters (pure): the value rule, the backfill cut, window queries over rollups and raw events.

Values are Decimal(38, 9) end to end (never Float64): a value is valid when its JSON text (a number,
or a numeric string) parses exactly into Decimal(38, 9); otherwise the event is skipped for the meter,
never counted as zero. The rollup (minute, per namespace, subject and group-by values) keeps aggregate
*states*, so windows of any size merge exactly, including uniqExact (UNIQUE_COUNT) and argMax (LATEST).

Every query has the same shape whether it reads rollups or raw events: states from whole minutes in
the rollup, UNION ALL states computed from raw events for partial minutes at the edges, merged once.
`raw_query` is the reference: the same answer from raw events only (tests and the benchmark).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from aggregator.jsonpath import Segment, clickhouse_args
from aggregator.meter import VALUE_SCALE, Aggregation, Meter, WindowSize
from common.events_table import EVENTS_TABLE, INSERTED_AT

ROLLUP_DEDUPLICATION_WINDOW = 10_000
METERS_TABLE = "meters"
_NUMBER_RE = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
DEC_TYPE = f"Decimal(38, {VALUE_SCALE})"
LATEST_KEY_TYPE = "Tuple(DateTime64(3, 'UTC'), String, String)"


def literal(value: str) -> str:
    """A ClickHouse string literal (for DDL, where server-side parameters are not available)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def qualified(database: str, name: str) -> str:
    return f"{ident(database)}.{ident(name)}"


def group_column(key: str) -> str:
    return f"group_{key}"


# --- per-event expressions over the events table -------------------------------------------------


def _raw(segments: tuple[Segment, ...]) -> str:
    """The JSON text at the path ('' when missing): the document is parsed once per path."""
    return f"JSONExtractRaw(data, {clickhouse_args(segments)})"


def group_expr(segments: tuple[Segment, ...]) -> str:
    """A group-by value: strings as is, other JSON as its text, '' when missing or null."""
    raw = _raw(segments)
    return f"multiIf(startsWith({raw}, '\"'), JSONExtractString({raw}), {raw} = 'null', '', {raw})"


_NUMBER_SQL = "'" + _NUMBER_RE.replace("\\", "\\\\") + "'"
_ZERO_SQL = "'" + r"^[+-]?(0+\.?0*|\.0+)([eE][+-]?[0-9]+)?$".replace("\\", "\\\\") + "'"


def value_exprs(meter: Meter) -> tuple[str | None, str]:
    """(value expression, validity predicate) of the meter over an events row (mirrors meter.value_error)."""
    segments = meter.value_segments
    if segments is None:
        return None, "1"
    return raw_value_rule(meter.aggregation, _raw(segments))


def raw_value_rule(aggregation: Aggregation, raw: str) -> tuple[str, str]:
    """(value expression, validity predicate) over `raw`, the JSON text at the value path ('' if missing):
    the one value rule, used with a static path (`value_exprs`) and by the router (`routing`)."""
    text = _text_of(raw)
    return _value_rule(aggregation, raw, text, _decimal_of(text))


def _text_of(raw: str) -> str:
    return f"if(startsWith({raw}, '\"'), JSONExtractString({raw}), {raw})"


def _decimal_of(text: str) -> str:
    return f"toDecimal128OrNull({text}, {VALUE_SCALE})"


def _value_rule(aggregation: Aggregation, raw: str, text: str, dec: str) -> tuple[str, str]:
    """The value rule over the raw JSON text, its text (strings unquoted) and its decimal, each an expression
    or the alias of one."""
    if aggregation is Aggregation.UNIQUE_COUNT:
        return text, f"(startsWith({raw}, '\"') OR match({raw}, {_NUMBER_SQL}))"
    # A value that converts to 0 must be written as a zero (0, 0.0, 0e5): `1e-400` underflows every
    # conversion to 0 and would be counted as zero, where meter.parse_number calls it invalid.
    # (`OR` evaluates its right side only where the left is false: the regex runs on zeros alone.)
    zero = f"({dec} != 0 OR match({text}, {_ZERO_SQL}))"
    valid = (
        f"(match({text}, {_NUMBER_SQL}) AND {dec} IS NOT NULL AND toDecimal256OrNull({text}, 40) = {dec} AND {zero})"
    )
    return f"assumeNotNull({dec})", valid


# The aliases of a raw read's WITH clause (names no events column or query alias has).
_RAW_ALIAS, _TEXT_ALIAS, _DEC_ALIAS = "mg_value_raw", "mg_value_text", "mg_value_dec"


def aliased_value_rule(meter: Meter) -> tuple[str, str | None, str]:
    """(WITH definitions, value expression, validity predicate) of the meter for a read of raw events: the
    same rule as `value_exprs`, with the JSON text, its unquoted text and its decimal each written once as
    an alias. The engine plans a query's expressions from their text: spelled out, the rule repeats the
    extraction a dozen times and costs ~1 ms more per read (5.8 -> 4.8 ms for a subject's partial minutes
    on the embedded engine), paid by every meter read with raw edges or a tail."""
    segments = meter.value_segments
    if segments is None:
        return "", None, "1"
    definitions = (
        f"{_raw(segments)} AS {_RAW_ALIAS}, {_text_of(_RAW_ALIAS)} AS {_TEXT_ALIAS}, "
        f"{_decimal_of(_TEXT_ALIAS)} AS {_DEC_ALIAS}"
    )
    value, valid = _value_rule(meter.aggregation, _RAW_ALIAS, _TEXT_ALIAS, _DEC_ALIAS)
    return definitions, value, valid


def state_columns(meter: Meter, value: str | None = None) -> list[tuple[str, str, str]]:
    """(column, AggregateFunction type, state expression over an events row) per rollup state; `value`: the
    value expression to aggregate (default: `value_exprs`')."""
    if value is None:
        value, _ = value_exprs(meter)
    match meter.aggregation:
        case Aggregation.COUNT:
            return [("value", "AggregateFunction(count)", "countState()")]
        case Aggregation.SUM:
            return [("value", f"AggregateFunction(sum, {DEC_TYPE})", f"sumState({value})")]
        case Aggregation.AVG:
            return [
                ("value", f"AggregateFunction(sum, {DEC_TYPE})", f"sumState({value})"),
                ("value_count", "AggregateFunction(count)", "countState()"),
            ]
        case Aggregation.MIN:
            return [("value", f"AggregateFunction(min, {DEC_TYPE})", f"minState({value})")]
        case Aggregation.MAX:
            return [("value", f"AggregateFunction(max, {DEC_TYPE})", f"maxState({value})")]
        case Aggregation.UNIQUE_COUNT:
            return [("value", "AggregateFunction(uniqExact, String)", f"uniqExactState({value})")]
        case Aggregation.LATEST:
            # Ties on time are broken by (source, id), unique per namespace: the answer is deterministic.
            return [
                (
                    "value",
                    f"AggregateFunction(argMax, {DEC_TYPE}, {LATEST_KEY_TYPE})",
                    f"argMaxState({value}, tuple(time, source, id))",
                )
            ]
    raise AssertionError(meter.aggregation)


def merge_exprs(meter: Meter) -> list[str]:
    fn = {
        Aggregation.COUNT: "countMerge",
        Aggregation.SUM: "sumMerge",
        Aggregation.AVG: "sumMerge",
        Aggregation.MIN: "minMerge",
        Aggregation.MAX: "maxMerge",
        Aggregation.UNIQUE_COUNT: "uniqExactMerge",
        Aggregation.LATEST: "argMaxMerge",
    }[meter.aggregation]
    exprs = [f"{fn}(value)"]
    if meter.aggregation is Aggregation.AVG:
        exprs.append("countMerge(value_count)")
    return exprs


def meter_scope(meter: Meter) -> str:
    """The events rows a meter looks at, by columns only (type, namespace for API meters, eventFrom)."""
    parts = [f"type = {literal(meter.event_type)}"]
    if meter.namespace is not None:
        parts.append(f"namespace = {literal(meter.namespace)}")
    if meter.event_from is not None:
        parts.append(f"time >= toDateTime64({literal(_ch_time(meter.event_from))}, 3, 'UTC')")
    return " AND ".join(parts)


def meter_filter(meter: Meter) -> str:
    """Which events rows belong to the meter: its scope, and a valid value (JSON extraction per row)."""
    _, valid = value_exprs(meter)
    return f"{meter_scope(meter)} AND {valid}"


def _ch_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.") + f"{t.microsecond // 1000:03d}"


# --- DDL -----------------------------------------------------------------------------------------


def meters_table_ddl(database: str) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {qualified(database, METERS_TABLE)}
(
    namespace String COMMENT 'namespace of an API meter; empty for a config-file meter (every namespace)',
    slug String,
    id String COMMENT 'meter id; the rollup table is meter_rollup_<id>',
    definition String COMMENT 'the meter as OpenMeter v1 JSON',
    state LowCardinality(String) COMMENT 'creating | backfilling | ready | failed | deleted',
    cutover DateTime64(3, 'UTC') COMMENT 'events inserted before: backfilled; at or after: the roller',
    created_at DateTime64(3, 'UTC'),
    version UInt64,
    {BACKFILLED_COLUMN}
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (namespace, slug, id)
"""


BACKFILLED_COLUMN = (
    "backfilled Int32 DEFAULT 0 COMMENT 'backfilling: the last event month (YYYYMM) rolled up, 0 for none'"
)


def meters_backfilled_ddl(database: str) -> str:
    """The progress column on a meters table made before it existed."""
    return f"ALTER TABLE {qualified(database, METERS_TABLE)} ADD COLUMN IF NOT EXISTS {BACKFILLED_COLUMN}"


INSERTED_AT_INDEX = "idx_inserted_at"


def inserted_at_index_ddl(database: str) -> str:
    """Granules by insert time: the rollups' tail (events stored since the roller's mark) and each roll
    read only the granules holding recent inserts."""
    return (
        f"ALTER TABLE {qualified(database, EVENTS_TABLE)} ADD INDEX IF NOT EXISTS {INSERTED_AT_INDEX} "
        f"{INSERTED_AT} TYPE minmax GRANULARITY 1"
    )


def inserted_at_ddl(database: str) -> str:
    return (
        f"ALTER TABLE {qualified(database, EVENTS_TABLE)} ADD COLUMN IF NOT EXISTS {INSERTED_AT} "
        f"DateTime64(3, 'UTC') DEFAULT now64(3) "
        f"COMMENT 'set by ClickHouse at insert; what the meter roller and backfills cut on'"
    )


@dataclass(frozen=True, slots=True)
class Tier:
    """A rollup granularity: the minute table (exact edges) and the hour table (long ranges)."""

    column: str  # the time column of the table: minute | hour
    suffix: str
    truncate: str  # ClickHouse function from an event time to the row's time


MINUTE = Tier("minute", "", "toStartOfMinute")
HOUR = Tier("hour", "_hour", "toStartOfHour")
TIERS = (MINUTE, HOUR)


def tier_table(meter: Meter, tier: Tier) -> str:
    return meter.rollup_table + tier.suffix


def cutover_literal(cutover: datetime) -> str:
    return f"toDateTime64({literal(_ch_time(cutover))}, 3, 'UTC')"


def backfill_months_sql(database: str, meter: Meter, cutover: datetime) -> str:
    """The months (YYYYMM of event time) a backfill must cover, with their event counts, oldest first.

    Scope only, no value check: this pass exists to report progress, and a month whose events are all
    invalid just backfills nothing."""
    return (
        f"SELECT toYYYYMM(time) AS month, count() FROM {qualified(database, EVENTS_TABLE)} "
        f"WHERE {meter_scope(meter)} AND {INSERTED_AT} < {cutover_literal(cutover)} "
        "GROUP BY month ORDER BY month"
    )


# --- window queries --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    """A validated meter query. Windows: `window` grid in `tz`, or explicit `boundaries`, or one window."""

    meter: Meter
    namespace: str
    start: datetime
    end: datetime
    window: WindowSize | None = None
    tz: str = "UTC"
    boundaries: tuple[datetime, ...] | None = None
    subjects: tuple[str, ...] = ()
    filters: tuple[tuple[str, str], ...] = ()
    group_by: tuple[str, ...] = ()
    group_subject: bool = False
    hour_tier: bool = True  # False: whole hours from the minute table too (one table read fewer)
    # (subject, customer id) pairs: with group_subject, rows group by customer instead of subject (exact for
    # every aggregation: the states of a customer's subjects merge in the engine).
    subject_groups: tuple[tuple[str, str], ...] = ()
    # Whether the request gave `from` / `to`. Without them the range is the whole event range, windows
    # are not clipped, and an unwindowed row spans the minutes of its events (`spans_events`).
    from_given: bool = True
    to_given: bool = True


def spans_events(q: Query) -> bool:
    """An unwindowed query missing `from` or `to`: each row's window is [minute of its first event,
    minute of its last event + 1 minute) (OpenMeter), so rows carry minutes, merged by min/max."""
    return q.window is None and q.boundaries is None and not (q.from_given and q.to_given)


def _one_window(q: Query) -> bool:
    """Explicit boundaries that are just [start, end): the query range itself is the only window."""
    return q.boundaries == (q.start, q.end)


def _bucket(q: Query, ts: str) -> tuple[str, str]:
    """(bucket start, bucket end) SQL over a UTC DateTime expression, as Int64 unix seconds."""
    tz = literal(q.tz)
    if q.boundaries is not None:
        if _one_window(q):
            # Every row is window 0 (the usual balance read from a snapshot): no per-row array search.
            return "toInt64(0)", "toInt64(0)"
        # arrayFirstIndex is 1-based: the first boundary after ts is window k-2's end (0-based).
        idx = f"toInt64(arrayFirstIndex(b -> b > {ts}, {{bounds:Array(DateTime64(3, 'UTC'))}}) - 2)"
        return idx, idx
    if spans_events(q) or q.window is WindowSize.MINUTE:
        s = f"toInt64(toUnixTimestamp(toStartOfMinute({ts})))"
        return s, f"{s} + 60"
    match q.window:
        case None:
            return "toInt64(0)", "toInt64(0)"
        case WindowSize.HOUR:
            s = f"toInt64(toUnixTimestamp(toStartOfHour({ts}, {tz})))"
            return s, f"toInt64(toUnixTimestamp(toStartOfHour(toStartOfHour({ts}, {tz}) + INTERVAL 90 MINUTE, {tz})))"
        case WindowSize.DAY:
            s = f"toInt64(toUnixTimestamp(toStartOfDay({ts}, {tz})))"
            return s, f"toInt64(toUnixTimestamp(toStartOfDay(toStartOfDay({ts}, {tz}) + INTERVAL 36 HOUR, {tz})))"
        case WindowSize.MONTH:
            month = f"toStartOfMonth({ts}, {tz})"
            return (
                f"toInt64(toUnixTimestamp(toDateTime({month}, {tz})))",
                f"toInt64(toUnixTimestamp(toDateTime(toStartOfMonth({month} + 32), {tz})))",
            )
    raise AssertionError(q.window)


def _floor_minute(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


def _ceil_minute(t: datetime) -> datetime:
    f = _floor_minute(t)
    return f if f == t else f + timedelta(minutes=1)


def plan_edges(q: Query) -> tuple[datetime, datetime, list[datetime], list[tuple[datetime, datetime]]]:
    """(rollup from, rollup to, inner minutes to skip in the rollup, raw intervals) for the query.

    Whole minutes inside [start, end) come from the rollup, except minutes cut by a window boundary
    that is not on a minute; those parts, and the partial minutes at start and end, come from raw events.
    """
    cuts = [q.start, q.end, *(q.boundaries or ())]
    edge_minutes = sorted({_floor_minute(b) for b in cuts if b != _floor_minute(b)})
    raw: list[tuple[datetime, datetime]] = []
    for m in edge_minutes:
        lo, hi = max(m, q.start), min(m + timedelta(minutes=1), q.end)
        if lo < hi:
            raw.append((lo, hi))
    r_from, r_to = _ceil_minute(q.start), _floor_minute(q.end)
    skip = [m for m in edge_minutes if r_from <= m < r_to]
    return r_from, r_to, skip, raw


def _select_keys(q: Query, ts: str, *, from_raw: bool) -> list[str]:
    start, end = _bucket(q, ts)
    keys = [f"{start} AS bucket", f"{end} AS bucket_end"]
    # Not named `subject`: ClickHouse lets aliases shadow columns in WHERE (`subject IN ...` would see '').
    if q.group_subject and q.subject_groups:
        subjects = "[" + ", ".join(literal(s) for s, _ in q.subject_groups) + "]"
        groups = "[" + ", ".join(literal(c) for _, c in q.subject_groups) + "]"
        keys.append(f"transform(subject, {subjects}, {groups}, '') AS subject_key")
    else:
        keys.append("subject AS subject_key" if q.group_subject else "'' AS subject_key")
    segments = q.meter.group_segments()
    for key in q.group_by:
        col = ident(group_column(key))
        keys.append(f"{group_expr(segments[key])} AS {col}" if from_raw else col)
    return keys


def _key_filters(q: Query, params: dict[str, Any]) -> list[str]:
    """Namespace and subjects: columns of every table's sort key."""
    where = ["namespace = {ns:String}"]
    params["ns"] = q.namespace
    if q.subjects:
        where.append("subject IN {subjects:Array(String)}")
        params["subjects"] = list(q.subjects)
    return where


def _group_filters(q: Query, params: dict[str, Any], *, from_raw: bool) -> list[str]:
    where = []
    segments = q.meter.group_segments()
    for i, (key, value) in enumerate(q.filters):
        col = group_expr(segments[key]) if from_raw else ident(group_column(key))
        where.append(f"{col} = {{f{i}:String}}")
        params[f"f{i}"] = value
    return where


def _raw_select(
    database: str,
    q: Query,
    params: dict[str, Any],
    intervals: list[tuple[datetime, datetime]],
    *,
    stored_from: datetime | None = None,
    skip: list[datetime] | None = None,
    prefix: str = "",
) -> str:
    """States from raw events in `intervals` of event time (minus the whole minutes in `skip`); with
    `stored_from`, only the events stored at or after it (the rollups' tail: what the roller has not
    counted yet, found through the `inserted_at` skip index)."""
    # PREWHERE narrows to the key range (namespace, type, subject, time) before any JSON is parsed: the
    # value rule then runs on the few rows at the edges, not on whole granules.
    prewhere = [*_key_filters(q, params), f"type = {literal(q.meter.event_type)}"]
    spans = []
    for i, (lo, hi) in enumerate(intervals):
        lo_name, hi_name = f"{prefix}lo{i}", f"{prefix}hi{i}"
        spans.append(f"(time >= {{{lo_name}:DateTime64(3, 'UTC')}} AND time < {{{hi_name}:DateTime64(3, 'UTC')}})")
        params[lo_name], params[hi_name] = lo, hi
    prewhere.append("(" + " OR ".join(spans) + ")")
    if stored_from is not None:
        prewhere.append(f"{INSERTED_AT} >= {{{prefix}stored:DateTime64(3, 'UTC')}}")
        params[f"{prefix}stored"] = stored_from
    if skip:
        prewhere.append(f"toStartOfMinute(time) NOT IN {{{prefix}skip:Array(DateTime('UTC'))}}")
        params[f"{prefix}skip"] = skip
    definitions, value, valid = aliased_value_rule(q.meter)
    where = [*_group_filters(q, params, from_raw=True), meter_scope(q.meter), valid]  # meter_filter, aliased
    # Explicit boundaries may fall inside a second: bucket on the millisecond time, not on whole seconds.
    keys = _select_keys(q, "time" if q.boundaries is not None else "toDateTime(time, 'UTC')", from_raw=True)
    states = [f"{expr} AS {ident(name)}" for name, _, expr in state_columns(q.meter, value)]
    return (
        f"{'WITH ' + definitions + ' ' if definitions else ''}"
        f"SELECT {', '.join(keys + states)} FROM {qualified(database, EVENTS_TABLE)} "
        f"PREWHERE {' AND '.join(prewhere)} WHERE {' AND '.join(where)} "
        f"GROUP BY bucket, bucket_end, subject_key{''.join(', ' + ident(group_column(k)) for k in q.group_by)}"
    )


def _single_row(q: Query) -> bool:
    """One window and no grouping: the answer is at most one row (a subject's total, a balance read)."""
    one_bucket = _one_window(q) if q.boundaries is not None else q.window is None
    return one_bucket and not q.group_by and not q.group_subject


def _outer(q: Query, inner: str) -> str:
    merges = ", ".join(merge_exprs(q.meter))
    spans = spans_events(q)
    if spans:
        keys = "min(bucket) AS span_start, max(bucket_end) AS span_end"
        if _single_row(q):
            return f"SELECT {keys}, '' AS subject_key, {merges} FROM ({inner}) HAVING count() > 0"
        groups = "".join(", " + ident(group_column(k)) for k in q.group_by)
        return (
            f"SELECT {keys}, subject_key{groups}, {merges} FROM ({inner}) "
            f"GROUP BY subject_key{groups} ORDER BY subject_key{groups}"
        )
    if _single_row(q):
        # Every inner row has the same constant keys: merge without GROUP BY / ORDER BY (~1-3 ms less on
        # chdb). HAVING keeps "only windows with data": no inner row, no result row, as with GROUP BY.
        keys = "toInt64(0) AS bucket, toInt64(0) AS bucket_end, '' AS subject_key"
        return f"SELECT {keys}, {merges} FROM ({inner}) HAVING count() > 0"
    groups = "".join(", " + ident(group_column(k)) for k in q.group_by)
    return (
        f"SELECT bucket, any(bucket_end) AS bucket_end, subject_key{groups}, {merges} FROM ({inner}) "
        f"GROUP BY bucket, subject_key{groups} ORDER BY bucket, subject_key{groups}"
    )


def _floor_hour(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def _ceil_hour(t: datetime) -> datetime:
    f = _floor_hour(t)
    return f if f == t else f + timedelta(hours=1)


def hour_tier_allowed(q: Query) -> bool:
    """Hour rows may serve a query only if no window boundary falls inside a UTC hour."""
    if q.boundaries is not None:
        return all(b == _floor_hour(b) for b in q.boundaries[1:-1])
    if spans_events(q):
        return False  # the first and last event's minutes are known only to the minute table
    if q.window is None:
        return True
    if q.window is WindowSize.MINUTE:
        return False
    return _whole_hour_zone(q.tz)


@functools.lru_cache(maxsize=64)
def _whole_hour_zone(name: str) -> bool:
    """True when every UTC offset of the zone from 1970 to 2100 is whole hours (then local hours, days
    and months start on UTC hours). Zones such as Asia/Kolkata are answered from minute rows."""
    zone = ZoneInfo(name)
    t, stop = datetime(1970, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
    while t < stop:
        if (t.astimezone(zone).utcoffset() or timedelta(0)) % timedelta(hours=1):
            return False
        t += timedelta(days=7)  # every real offset lasts far longer than a week
    return True


Span = tuple["Tier", datetime, datetime]

# A table read costs ~3-4 ms of fixed work on chdb, about what reading and merging ~50k more rows costs.
HOUR_TIER_MIN_SAVED_ROWS = 50_000


@dataclass(frozen=True, slots=True)
class TierStats:
    """Row counts of a meter's rollup tables (active parts) and its number of subjects: the planner's input."""

    minute_rows: int
    hour_rows: int
    subjects: int


def hour_tier_pays(stats: TierStats, subjects: int) -> bool:
    """Whether reading whole hours from the hour table (one more table read) saves enough rows, for a query
    over `subjects` subjects (0 = all). Estimated from averages: a subject far denser than the meter's
    average may read up to 60x its hour rows from the minute table (bounded by minutes x group values)."""
    if subjects == 0 or stats.subjects == 0:
        return True
    saved_per_subject = (stats.minute_rows - stats.hour_rows) / stats.subjects
    return saved_per_subject * subjects >= HOUR_TIER_MIN_SAVED_ROWS


def plan_tiers(q: Query) -> tuple[list[Span], list[datetime], list[tuple[datetime, datetime]]]:
    """([(tier, from, to)], minutes to skip, raw intervals): hours where whole, minutes, raw at the edges."""
    r_from, r_to, skip, raw = plan_edges(q)
    spans: list[tuple[Tier, datetime, datetime]] = []
    if r_from < r_to:
        h_from, h_to = _ceil_hour(r_from), _floor_hour(r_to)
        if not skip and q.hour_tier and h_from < h_to and hour_tier_allowed(q):
            spans = [(MINUTE, r_from, h_from), (HOUR, h_from, h_to), (MINUTE, h_to, r_to)]
        else:
            spans = [(MINUTE, r_from, r_to)]
    return [s for s in spans if s[1] < s[2]], skip, raw


def rollup_interval(q: Query) -> tuple[datetime, datetime] | None:
    """The event-time interval `build_query` answers from the rollups (the span of its tiers), None when it
    reads raw events only: the rollups' tail (events stored since the roller's mark) matters only there."""
    spans = plan_tiers(q)[0]
    return (spans[0][1], spans[-1][2]) if spans else None


def build_query(database: str, q: Query, stored_from: datetime | None = None) -> tuple[str, dict[str, Any]]:
    """Hour rollup for whole hours, minute rollup for whole minutes, raw events for the partial minutes
    at the edges; all as aggregate states, merged once. Rows: bucket, bucket_end, subject_key, group
    values..., values.

    `stored_from`: the roller's `done` mark. The rollups hold the events stored before it; the events
    stored since (the tail) are read raw over the rollup spans. None: the rollups are complete (tests of
    the tiers alone)."""
    params: dict[str, Any] = {}
    if q.boundaries is not None and not _one_window(q):
        params["bounds"] = list(q.boundaries)
    spans, skip, raw = plan_tiers(q)
    parts: list[str] = []
    # One read per rollup table: the minute spans before and after the hours are OR'ed ranges of the
    # same key prefix. Each table read costs ~2 ms of fixed planning on chdb, whatever it returns.
    for t, tier in enumerate(TIERS):
        mine = [(lo, hi) for s_tier, lo, hi in spans if s_tier is tier]
        if not mine:
            continue
        col = tier.column
        where = [*_key_filters(q, params), *_group_filters(q, params, from_raw=False)]
        ranges = []
        for i, (lo, hi) in enumerate(mine):
            ranges.append(f"({col} >= {{rfrom{t}_{i}:DateTime('UTC')}} AND {col} < {{rto{t}_{i}:DateTime('UTC')}})")
            params[f"rfrom{t}_{i}"], params[f"rto{t}_{i}"] = lo, hi
        where.append(ranges[0] if len(ranges) == 1 else "(" + " OR ".join(ranges) + ")")
        if skip and tier is MINUTE:
            where.append("minute NOT IN {skip:Array(DateTime('UTC'))}")
            params["skip"] = skip
        keys = _select_keys(q, col, from_raw=False)
        states = [ident(name) for name, _, _ in state_columns(q.meter)]
        table = qualified(database, tier_table(q.meter, tier))
        parts.append(f"SELECT {', '.join(keys + states)} FROM {table} WHERE {' AND '.join(where)}")
    if raw:
        parts.append(_raw_select(database, q, params, raw))
    if spans and stored_from is not None:
        # The spans are contiguous: one interval, minus the minutes cut by a window boundary (read raw above).
        whole = [(spans[0][1], spans[-1][2])]
        parts.append(_raw_select(database, q, params, whole, stored_from=stored_from, skip=skip, prefix="t"))
    if not parts:
        return "SELECT 1 WHERE 0", params
    return _outer(q, " UNION ALL ".join(parts)), params


def raw_query(database: str, q: Query) -> tuple[str, dict[str, Any]]:
    """The reference answer: the same query over raw events only (no rollup)."""
    params: dict[str, Any] = {}
    if q.boundaries is not None and not _one_window(q):
        params["bounds"] = list(q.boundaries)
    return _outer(q, _raw_select(database, q, params, [(q.start, q.end)])), params
