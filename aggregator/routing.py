"""SQL for the shared rollup (pure): one router feeds every meter, so counting costs the same whatever the
number of meters, and the roller runs it behind ingest (see README "Ingest cost independent of the number
of meters" and "The roller").

- `meter_routes` (Join engine, in memory, persisted): one row per live meter build, keyed by
  (namespace, event type) (`''` = a config meter, every namespace), with the meter's aggregation, its
  JSONPaths as segment arrays, its cutover and eventFrom.
- `router_select`: the events stored in one `inserted_at` range, each joined to its routes (a hash lookup;
  an event of a type no meter counts drops out there), the value and group values extracted along the
  route's paths (the same value rule as `sql.value_exprs`, over the same raw JSON text): one row per
  (event, meter), inserted by each roll (`roll_sql`) into `meter_routed` (a Null table), where
- one view per aggregation family (`FAMILIES`, created with the family's first meter) turns its meters'
  rows into minute and hour states in
  `meter_rollups` (COUNT, SUM, AVG), `meter_rollups_minmax`, `meter_rollups_unique`, `meter_rollups_latest`:
  rows keyed by (rollup_id, tier, namespace, subject, time, groups).
- `meter_rolls`: the roller's marks (`aggregator.roller`).
- `meter_rollup_<id>` / `meter_rollup_<id>_hour`: plain views (no cost when rolling), one pair per meter,
  with the per-meter columns dashboards and `sql.build_query` read (`minute`|`hour`, `group_<key>`, `value`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from aggregator.jsonpath import Segment
from aggregator.meter import Aggregation, Meter
from aggregator.sql import (
    DEC_TYPE,
    LATEST_KEY_TYPE,
    ROLLUP_DEDUPLICATION_WINDOW,
    TIERS,
    Tier,
    cutover_literal,
    group_column,
    group_expr,
    ident,
    literal,
    meter_filter,
    qualified,
    raw_value_rule,
    state_columns,
    tier_table,
)
from common.events_table import EVENTS_TABLE, INSERTED_AT

ROLLUPS_TABLE = "meter_rollups"
ROUTES_TABLE = "meter_routes"
ROUTED_TABLE = "meter_routed"
ROUTER_VIEW = "meter_router"  # the earlier design's view on events (dropped by migrate)
ROLLS_TABLE = "meter_rolls"
TIER_CODE = {"minute": 0, "hour": 1}
AGG_CODE = {
    Aggregation.COUNT: 1,
    Aggregation.SUM: 2,
    Aggregation.AVG: 3,
    Aggregation.MIN: 4,
    Aggregation.MAX: 5,
    Aggregation.UNIQUE_COUNT: 6,
    Aggregation.LATEST: 7,
}


@dataclass(frozen=True, slots=True)
class Family:
    """A shared rollup table for some aggregations, with the states they need (and no others: a state
    column costs its construction for every row written, even when empty)."""

    table: str
    aggregations: tuple[Aggregation, ...]
    states: tuple[tuple[str, str, str], ...]  # (column, type, state expression over the routed rows)


_A = AGG_CODE
FAMILIES = (
    Family(
        ROLLUPS_TABLE,
        (Aggregation.COUNT, Aggregation.SUM, Aggregation.AVG),
        (
            ("value_sum", f"AggregateFunction(sum, {DEC_TYPE})", f"sumStateIf(v, agg != {_A[Aggregation.COUNT]})"),
            ("value_count", "AggregateFunction(count)", f"countStateIf(agg != {_A[Aggregation.SUM]})"),
        ),
    ),
    Family(
        ROLLUPS_TABLE + "_minmax",
        (Aggregation.MIN, Aggregation.MAX),
        (
            ("value_min", f"AggregateFunction(min, {DEC_TYPE})", f"minStateIf(v, agg = {_A[Aggregation.MIN]})"),
            ("value_max", f"AggregateFunction(max, {DEC_TYPE})", f"maxStateIf(v, agg = {_A[Aggregation.MAX]})"),
        ),
    ),
    Family(
        ROLLUPS_TABLE + "_unique",
        (Aggregation.UNIQUE_COUNT,),
        (("value_unique", "AggregateFunction(uniqExact, String)", "uniqExactState(text)"),),
    ),
    Family(
        ROLLUPS_TABLE + "_latest",
        (Aggregation.LATEST,),
        (
            (
                "value_latest",
                f"AggregateFunction(argMax, {DEC_TYPE}, {LATEST_KEY_TYPE})",
                "argMaxState(v, tuple(time, source, id))",
            ),
        ),
    ),
)
# The shared column holding each per-meter state column ("value", "value_count") per aggregation.
_SHARED = {
    Aggregation.COUNT: {"value": "value_count"},
    Aggregation.SUM: {"value": "value_sum"},
    Aggregation.AVG: {"value": "value_sum", "value_count": "value_count"},
    Aggregation.MIN: {"value": "value_min"},
    Aggregation.MAX: {"value": "value_max"},
    Aggregation.UNIQUE_COUNT: {"value": "value_unique"},
    Aggregation.LATEST: {"value": "value_latest"},
}


def family(aggregation: Aggregation) -> Family:
    return next(f for f in FAMILIES if aggregation in f.aggregations)


NO_EVENT_FROM = datetime(1970, 1, 1, tzinfo=UTC)


def rollup_id(meter: Meter, cutover: datetime) -> str:
    """A meter's rollup identity: one per build (a rebuild never mixes with rows of an earlier build)."""
    return f"{meter.id}_{int(cutover.timestamp() * 1000)}"


def backfill_id(rid: str) -> str:
    """The rows a build's backfill writes, apart from the router's (same build): a resumed backfill can
    forget its own unfinished month without touching what the router counted meanwhile."""
    return f"{rid}_b"


def rollups_table_ddl(database: str, fam: Family) -> str:
    states = ",\n".join(f"    {name} {typ}" for name, typ, _ in fam.states)
    kinds = ", ".join(a.value for a in fam.aggregations)
    return f"""
CREATE TABLE IF NOT EXISTS {qualified(database, fam.table)}
(
    rollup_id String COMMENT 'meter id _ cutover (ms): one per build of a meter',
    tier UInt8 COMMENT '0 = minute rows, 1 = hour rows',
    namespace LowCardinality(String),
    time DateTime('UTC') COMMENT 'start of the minute or hour (UTC)',
    subject String,
    groups Array(String) COMMENT 'group-by values in the order of the sorted keys',
{states}
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (rollup_id, tier, namespace, subject, time, groups)
SETTINGS non_replicated_deduplication_window = {ROLLUP_DEDUPLICATION_WINDOW}
COMMENT {literal("minute and hour rollups of the " + kinds + " meters (read through the meter_rollup_<id> views)")}
"""


def routed_table_ddl(database: str) -> str:
    """What the router passes on: one row per (event, meter) with its value; stores nothing (Null)."""
    return f"""
CREATE TABLE IF NOT EXISTS {qualified(database, ROUTED_TABLE)}
(
    rollup_id String,
    agg UInt8,
    namespace String,
    subject String,
    time DateTime64(3, 'UTC'),
    source String,
    id String,
    groups Array(String),
    v {DEC_TYPE},
    text String
)
ENGINE = Null
"""


def routes_table_ddl(database: str) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {qualified(database, ROUTES_TABLE)}
(
    route_key UInt64 DEFAULT cityHash64(route_namespace, route_type) COMMENT 'a number key keeps rows deletable',
    route_namespace String COMMENT 'the meter namespace; empty for a config meter (every namespace)',
    route_type String,
    rollup_id String,
    agg UInt8,
    value_path Array(String) COMMENT 'segments: k<key> or i<1-based or negative index>',
    group_paths Array(Array(String)) COMMENT 'one path per group-by key, keys sorted',
    cutover DateTime64(3, 'UTC') COMMENT 'events inserted from then on are counted by the router',
    event_from DateTime64(3, 'UTC')
)
ENGINE = Join(ALL, INNER, route_key)
"""


def encode_path(segments: tuple[Segment, ...]) -> list[str]:
    """Segments as strings for the router's fold: keys `k<key>`, indexes `i<n>` (JSONExtract's 1-based
    or negative index, as `jsonpath.clickhouse_args` writes it)."""
    out = []
    for seg in segments:
        if isinstance(seg, str):
            out.append("k" + seg)
        else:
            out.append(f"i{seg + 1 if seg >= 0 else seg}")
    return out


ROUTE_COLUMNS = [
    "route_namespace",
    "route_type",
    "rollup_id",
    "agg",
    "value_path",
    "group_paths",
    "cutover",
    "event_from",
]


def route_row(meter: Meter, cutover: datetime) -> list[object]:
    """The meter's route (its key is the table's DEFAULT, hashed by ClickHouse as the router hashes)."""
    value = () if meter.value_segments is None else meter.value_segments
    return [
        meter.namespace or "",
        meter.event_type,
        rollup_id(meter, cutover),
        AGG_CODE[meter.aggregation],
        encode_path(value),
        [encode_path(segs) for segs in meter.group_segments().values()],
        cutover,
        meter.event_from or NO_EVENT_FROM,
    ]


def _fold(path: str) -> str:
    """The raw JSON text at a segment path ('' when missing), one JSONExtractRaw per segment. Equal to the
    static `JSONExtractRaw(data, 'a', 2)` of `sql`: each step parses the text the previous one returned."""
    step = (
        "(acc, s) -> if(startsWith(s, 'i'), JSONExtractRaw(acc, toInt64OrZero(substring(s, 2))), "
        "JSONExtractRaw(acc, substring(s, 2)))"
    )
    return f"arrayFold({step}, {path}, data)"


def router_select(database: str) -> str:
    """The router: events stored in [{lo}, {hi}) of `inserted_at` (server-side parameters), each joined to
    the routes that count it, as one row per (event, meter) with its value (`meter_routed`'s columns)."""
    events, routes = qualified(database, EVENTS_TABLE), qualified(database, ROUTES_TABLE)
    stored = (
        f"SELECT namespace, subject, time, source, id, data, {INSERTED_AT}, type FROM {events} "
        f"WHERE {INSERTED_AT} >= {{lo:DateTime64(3, 'UTC')}} AND {INSERTED_AT} < {{hi:DateTime64(3, 'UTC')}}"
    )
    # 1. every event twice (its namespace, and '' for config meters), joined to its routes: a hash lookup.
    joined = (
        f"SELECT namespace, subject, time, source, id, data, rollup_id, agg, value_path, group_paths "
        f"FROM (SELECT namespace, subject, time, source, id, data, {INSERTED_AT}, type, route_namespace, "
        f"cityHash64(route_namespace, type) AS route_key "
        f"FROM ({stored}) ARRAY JOIN [namespace, ''] AS route_namespace) AS e "
        f"ALL INNER JOIN {routes} AS r USING (route_key) "
        f"WHERE e.route_namespace = r.route_namespace AND e.type = r.route_type "
        f"AND e.{INSERTED_AT} >= r.cutover AND e.time >= r.event_from"
    )
    # 2. the value and group values along the route's paths, once per (event, meter).
    group_value = group_expr_over("g")
    extracted = (
        f"SELECT rollup_id, agg, namespace, subject, time, source, id, {_fold('value_path')} AS raw, "
        f"arrayMap(g -> {group_value}, arrayMap(p -> {_fold('p')}, group_paths)) AS groups FROM ({joined})"
    )
    # 3. the meter's value rule (the same SQL as sql.value_exprs, over the same raw text).
    num_value, num_valid = raw_value_rule(Aggregation.SUM, "raw")
    text, unique_valid = raw_value_rule(Aggregation.UNIQUE_COUNT, "raw")
    count, unique = AGG_CODE[Aggregation.COUNT], AGG_CODE[Aggregation.UNIQUE_COUNT]
    valid = f"multiIf(agg = {count}, 1, agg = {unique}, {unique_valid}, {num_valid})"
    # 4. per aggregation family, the states for both tiers (`family_view_ddl`, on `meter_routed`).
    return (
        f"SELECT rollup_id, agg, namespace, subject, time, source, id, groups, "
        f"if(agg IN ({count}, {unique}), toDecimal128(0, 9), {num_value}) AS v, {text} AS text "
        f"FROM ({extracted}) WHERE {valid}"
    )


def roll_sql(database: str) -> str:
    """One roll: the router over the events stored in [{lo}, {hi}) into `meter_routed`, whose family views
    write the minute and hour states (see `aggregator.roller`)."""
    return f"INSERT INTO {qualified(database, ROUTED_TABLE)} {router_select(database)}"


def rolls_table_ddl(database: str) -> str:
    """The roller's marks: `intent` (the end of the roll being written) and `done` (every event stored
    before it is rolled up). Only the greatest of each kind matters (`max(mark)`; merges keep it)."""
    return f"""
CREATE TABLE IF NOT EXISTS {qualified(database, ROLLS_TABLE)}
(
    kind LowCardinality(String) COMMENT 'intent: a roll up to mark is being written; done: it is written',
    mark DateTime64(3, 'UTC') COMMENT 'events with inserted_at before it are (being) rolled up'
)
ENGINE = ReplacingMergeTree(mark)
ORDER BY kind
COMMENT 'the meter roller: how far the rollups have counted the events table (read max(mark) per kind)'
"""


def drop_router_view_sql(database: str) -> str:
    """The routing view on `events` of the earlier design (counting at insert), replaced by the roller."""
    return f"DROP VIEW IF EXISTS {qualified(database, ROUTER_VIEW)} SYNC"


def family_view_ddl(database: str, fam: Family) -> str:
    """The family's states for both tiers from the routed rows of its meters (ARRAY JOIN after the
    extraction: the JSON was parsed once per event and meter)."""
    codes = ", ".join(str(AGG_CODE[a]) for a in fam.aggregations)
    states = ", ".join(f"{expr} AS {name}" for name, _, expr in fam.states)
    grouped = (
        f"SELECT rollup_id, tier, namespace, if(tier = 0, toStartOfMinute(time), toStartOfHour(time)) AS bucket, "
        f"subject, groups, {states} FROM {qualified(database, ROUTED_TABLE)} ARRAY JOIN [0, 1] AS tier "
        f"WHERE agg IN ({codes}) GROUP BY rollup_id, tier, namespace, bucket, subject, groups"
    )
    columns = ", ".join(name for name, _, _ in fam.states)
    return (
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {qualified(database, fam.table + '_mv')} "
        f"TO {qualified(database, fam.table)} AS "
        f"SELECT rollup_id, tier, namespace, bucket AS time, subject, groups, {columns} FROM ({grouped})"
    )


def schema_ddl(database: str) -> list[str]:
    """Every statement of the shared rollup, in order (idempotent). A family's view is not among them: it
    is created with the family's first meter (`families_of`, `family_view_ddl`), because a view costs fixed work on
    every write even when no row reaches it (README "Ingest cost independent of the number of meters")."""
    return [
        *(rollups_table_ddl(database, f) for f in FAMILIES),
        routes_table_ddl(database),
        routed_table_ddl(database),
        rolls_table_ddl(database),
    ]


def families_of(codes: Iterable[int]) -> list[Family]:
    """The families of these aggregation codes (`AGG_CODE`, a route's `agg`), in `FAMILIES` order."""
    wanted = set(codes)
    return [f for f in FAMILIES if any(AGG_CODE[a] in wanted for a in f.aggregations)]


def group_expr_over(raw: str) -> str:
    """sql.group_expr over a raw-text column instead of a static path."""
    return f"multiIf(startsWith({raw}, '\"'), JSONExtractString({raw}), {raw} = 'null', '', {raw})"


def meter_view_ddl(database: str, meter: Meter, rid: str, tier: Tier) -> str:
    """The per-meter view dashboards and queries read: the columns a per-meter table used to have."""
    groups = [f"groups[{i + 1}] AS {ident(group_column(key))}" for i, key in enumerate(sorted(meter.group_by))]
    states = [f"{_SHARED[meter.aggregation][name]} AS {ident(name)}" for name, _, _ in state_columns(meter)]
    cols = ", ".join(["namespace", f"time AS {tier.column}", "subject", *groups, *states])
    return (
        f"CREATE OR REPLACE VIEW {qualified(database, tier_table(meter, tier))} AS SELECT {cols} "
        f"FROM {qualified(database, family(meter.aggregation).table)} "
        f"WHERE rollup_id IN ({literal(rid)}, {literal(backfill_id(rid))}) AND tier = {TIER_CODE[tier.column]}"
    )


def raw_view_ddl(database: str, meter: Meter, tier: Tier) -> str:
    """The per-meter view while the meter's backfill runs: the same columns, computed from raw events (exact
    at every moment, slower); `meter_view_ddl` replaces it when the rollup is complete."""
    groups = [f"{group_expr(segs)} AS {ident(group_column(key))}" for key, segs in meter.group_segments().items()]
    states = [f"{expr} AS {ident(name)}" for name, _, expr in state_columns(meter)]
    keys = ["namespace", f"{tier.truncate}(time) AS {tier.column}", "subject"]
    group_cols = [ident(group_column(key)) for key in meter.group_segments()]
    return (
        f"CREATE OR REPLACE VIEW {qualified(database, tier_table(meter, tier))} AS "
        f"SELECT {', '.join(keys + groups + states)} FROM {qualified(database, EVENTS_TABLE)} "
        f"WHERE {meter_filter(meter)} GROUP BY {', '.join(['namespace', tier.column, 'subject', *group_cols])}"
    )


def backfill_sql(database: str, meter: Meter, cutover: datetime, tier: Tier, month: int | None = None) -> str:
    """The meter's rows stored before the cutover (all, or one month of event time), into its rollup id."""
    where = f"{meter_filter(meter)} AND {INSERTED_AT} < {cutover_literal(cutover)}"
    if month is not None:
        where += f" AND toYYYYMM(time) = {int(month)}"
    groups = [group_expr(segs) for segs in meter.group_segments().values()]
    states = [f"{expr} AS {_SHARED[meter.aggregation][name]}" for name, _, expr in state_columns(meter)]
    keys = [
        f"{literal(backfill_id(rollup_id(meter, cutover)))} AS rollup_id",
        f"{TIER_CODE[tier.column]} AS tier",
        "namespace",
        f"{tier.truncate}(time) AS bucket",
        "subject",
        f"[{', '.join(groups)}] AS grp" if groups else "CAST([], 'Array(String)') AS grp",
    ]
    target = ["rollup_id", "tier", "namespace", "time", "subject", "groups", *_SHARED[meter.aggregation].values()]
    return (
        f"INSERT INTO {qualified(database, family(meter.aggregation).table)} ({', '.join(target)}) "
        f"SELECT {', '.join(keys + states)} FROM {qualified(database, EVENTS_TABLE)} WHERE {where} "
        "GROUP BY namespace, bucket, subject, grp"
    )


def delete_routes_sql(database: str, meter: Meter, keep: str | None = None, only: str | None = None) -> str:
    """Remove the meter's routes (all builds, all but `keep`, or `only` one): the router stops counting them."""
    where = f"startsWith(rollup_id, {literal(meter.id + '_')})"
    if keep is not None:
        where += f" AND rollup_id != {literal(keep)}"
    if only is not None:
        where += f" AND rollup_id = {literal(only)}"
    return f"ALTER TABLE {qualified(database, ROUTES_TABLE)} DELETE WHERE {where}"


def delete_rows_sql(database: str, meter: Meter, keep: str | None = None) -> str:
    """Forget the rows of the meter's builds (all, or all but `keep`). Nothing reads them once their
    routes and views are gone, so the mutation may run in the background."""
    where = f"startsWith(rollup_id, {literal(meter.id + '_')})"
    if keep is not None:
        where += f" AND rollup_id NOT IN ({literal(keep)}, {literal(backfill_id(keep))})"
    return f"ALTER TABLE {qualified(database, family(meter.aggregation).table)} DELETE WHERE {where}"


def delete_backfill_sql(database: str, meter: Meter, rid: str, from_month: int | None) -> str:
    """Forget a build's backfill rows (all, or those of event months >= from_month): a resumed backfill
    redoes an unfinished month from nothing."""
    where = f"rollup_id = {literal(backfill_id(rid))}"
    if from_month is not None:
        where += f" AND toYYYYMM(time) >= {int(from_month)}"
    return f"ALTER TABLE {qualified(database, family(meter.aggregation).table)} DELETE WHERE {where}"


def drop_views_sql(database: str, meter: Meter) -> list[str]:
    """The meter's views, and the per-meter tables and views of the earlier design (one per meter)."""
    stmts = [f"DROP VIEW IF EXISTS {qualified(database, tier_table(meter, t) + '_mv')} SYNC" for t in TIERS]
    return stmts + [f"DROP TABLE IF EXISTS {qualified(database, tier_table(meter, t))} SYNC" for t in TIERS]
