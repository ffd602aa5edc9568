"""A family's view exists once a meter of its family does (an unused view costs every roll), is created
before the meter's route, and comes back at migrate if lost; meters created while events stream and the
roller rolls count every event once (real ClickHouse engine, chdb)."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from aggregator import routing, sql
from aggregator.meter import Meter, WindowSize, parse_meter
from aggregator.query import shape_rows
from aggregator.repository import ClickHouseMeterRepository
from common.clickhouse import ClickHouse
from tests.support.meter_events import insert

pytestmark = pytest.mark.integration

T = datetime(2025, 3, 1, 12, 0, 30, tzinfo=UTC)


def family_views(ch: ClickHouse) -> set[str]:
    rows = ch.rows(
        "SELECT name FROM system.tables WHERE database = {db:String} AND engine = 'MaterializedView'",
        parameters={"db": ch.database},
    )
    return {str(r[0]) for r in rows}


def meter(aggregation: str) -> Meter:
    body = {"slug": aggregation.lower(), "aggregation": aggregation, "eventType": "call"}
    if aggregation != "COUNT":
        body["valueProperty"] = "$.n"
    return parse_meter(body, meter_id=uuid.uuid4().hex, namespace="ns")


def minute_value(ch: ClickHouse, m: Meter, merge: str) -> Decimal:
    view = sql.qualified(ch.database, sql.tier_table(m, sql.MINUTE))
    return Decimal(str(ch.rows(f"SELECT {merge}(value) FROM {view}")[0][0]))


def test_family_views_follow_the_meters_and_survive_migrate(clickhouse: ClickHouse) -> None:
    repo = ClickHouseMeterRepository(clickhouse)
    repo.migrate()
    assert family_views(clickhouse) == set()  # no meter, no view (and never one on events)

    total = meter("SUM")
    repo.build(total)
    assert family_views(clickhouse) == {routing.ROLLUPS_TABLE + "_mv"}

    peak = meter("MAX")
    repo.build(peak)
    assert family_views(clickhouse) == {routing.ROLLUPS_TABLE + "_mv", routing.ROLLUPS_TABLE + "_minmax_mv"}

    events = [
        {"id": f"e{i}", "time": T, "subject": "s", "type": "call", "data": {"n": n}} for i, n in enumerate([3, 9, 4])
    ]
    insert(clickhouse, "ns", events, "first")
    repo.roller.roll_once()
    assert minute_value(clickhouse, total, "sumMerge") == 16
    assert minute_value(clickhouse, peak, "maxMerge") == 9

    # A database that lost a view gets it back at the next start, before any insert is counted short.
    clickhouse.command(f"DROP VIEW {sql.qualified(clickhouse.database, routing.ROLLUPS_TABLE + '_minmax_mv')} SYNC")
    ClickHouseMeterRepository(clickhouse).migrate()
    assert routing.ROLLUPS_TABLE + "_minmax_mv" in family_views(clickhouse)
    insert(clickhouse, "ns", [{"id": "e9", "time": T, "subject": "s", "type": "call", "data": {"n": 12}}], "second")
    repo.roller.roll_once()
    assert minute_value(clickhouse, peak, "maxMerge") == 12
    assert minute_value(clickhouse, total, "sumMerge") == 28


def answers(ch: ClickHouse, m: Meter) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The meter's hourly answer from its rollups alone (call after a roll that covers every insert) and from
    raw events (the reference)."""
    q = sql.Query(
        meter=m,
        namespace="ns",
        start=datetime(2025, 3, 1, tzinfo=UTC),
        end=datetime(2025, 3, 2, tzinfo=UTC),
        window=WindowSize.HOUR,
        tz="UTC",
        group_by=(),
        group_subject=True,
    )
    out = []
    for build in (sql.build_query, sql.raw_query):
        text, params = build(ch.database, q)
        out.append(sorted((str(r.window_start), str(r.value)) for r in shape_rows(q, ch.rows(text, parameters=params))))
    return out[0], out[1]


def test_a_family_first_meter_created_while_events_stream_counts_each_once(clickhouse: ClickHouse) -> None:
    """The first meter of a family is created (its view, its route, its cutover, its backfill) while another
    thread keeps inserting and a third keeps rolling: every event is counted exactly once, by the backfill
    or by the roller."""
    repo = ClickHouseMeterRepository(clickhouse)
    repo.migrate()
    stop = threading.Event()
    batches = [0]
    rolls = [0]

    def roll() -> None:
        while not stop.is_set():
            if repo.roller.roll_once() is not None:
                rolls[0] += 1

    def stream() -> None:
        while not stop.is_set() or batches[0] < 5:
            b = batches[0]
            events = [
                {"id": f"b{b}-{i}", "time": T + timedelta(minutes=b % 50), "subject": f"s{i % 3}", "type": "call",
                 "data": {"n": b * 10 + i}}
                for i in range(20)
            ]  # fmt: skip
            insert(clickhouse, "ns", events, f"stream-{b}")
            batches[0] += 1

    writer, roller = threading.Thread(target=stream), threading.Thread(target=roll)
    writer.start()
    roller.start()
    try:
        meters = [meter("MAX"), meter("SUM"), meter("UNIQUE_COUNT"), meter("LATEST")]
        before = batches[0]
        for m in meters:
            repo.create(m)
        during = batches[0] - before
    finally:
        stop.set()
        writer.join(60)
        roller.join(60)
    assert during > 0, "no insert landed while the meters were created"
    assert rolls[0] > 0, "the roller never rolled while the meters were created"
    repo.roller.roll_once()
    assert family_views(clickhouse) == {f.table + "_mv" for f in routing.FAMILIES}
    for m in meters:
        from_rollups, from_raw = answers(clickhouse, m)
        assert from_rollups == from_raw, m.aggregation
        assert from_raw, m.aggregation


def test_bulk_creation_builds_every_family_and_backfills_history(clickhouse: ClickHouse) -> None:
    """`create_many` (many meters under one cutover): the families' views before the routes, the history
    before the cutover backfilled, what comes after counted live; every meter equals raw events."""
    repo = ClickHouseMeterRepository(clickhouse)
    repo.migrate()
    history = [
        {"id": f"h{i}", "time": T + timedelta(minutes=i), "subject": "s", "type": "call", "data": {"n": i + 1}}
        for i in range(6)
    ]
    insert(clickhouse, "ns", history, "history")
    meters = [meter("SUM"), meter("COUNT"), meter("MIN"), meter("UNIQUE_COUNT"), meter("AVG")]
    repo.create_many(meters)
    assert family_views(clickhouse) == {
        routing.ROLLUPS_TABLE + "_mv",
        routing.ROLLUPS_TABLE + "_minmax_mv",
        routing.ROLLUPS_TABLE + "_unique_mv",
    }
    live = [
        {"id": f"l{i}", "time": T + timedelta(minutes=30 + i), "subject": "s", "type": "call", "data": {"n": 10 * i}}
        for i in range(4)
    ]
    insert(clickhouse, "ns", live, "live")
    repo.roller.roll_once()
    assert {m.id for m in repo.live()} == {m.id for m in meters}
    for m in meters:
        from_rollups, from_raw = answers(clickhouse, m)
        assert from_rollups == from_raw, m.aggregation
        assert from_raw, m.aggregation
