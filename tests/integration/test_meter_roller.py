"""The meter roller on the real ClickHouse engine (chdb): a roll interrupted between its writes is redone
once, long backlogs roll in bounded ranges, and reads while rolls run are exact (rollups before the mark
plus the raw tail after it, re-read when a roll overlapped)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from aggregator import sql
from aggregator.meter import Meter, WindowSize, parse_meter
from aggregator.query import shape_rows
from aggregator.repository import ClickHouseMeterRepository
from aggregator.roller import ClickHouseRoller
from aggregator.service import MeterService
from common.clickhouse import ClickHouse
from tests.support.meter_events import insert

pytestmark = pytest.mark.integration

T = datetime(2025, 5, 1, 8, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def sum_meter() -> Meter:
    body = {
        "slug": "tokens",
        "aggregation": "SUM",
        "eventType": "call",
        "valueProperty": "$.n",
        "groupBy": {"m": "$.m"},
    }
    return parse_meter(body, meter_id=uuid.uuid4().hex, namespace="ns")


def batch(b: int, size: int = 50) -> list[dict[str, Any]]:
    return [
        {"id": f"b{b}-{i}", "time": T + timedelta(minutes=(b * 7 + i) % 300, seconds=i % 60), "subject": f"s{i % 4}",
         "type": "call", "data": {"n": b + i, "m": "ab"[i % 2]}}
        for i in range(size)
    ]  # fmt: skip


def meter_with_batches(
    clickhouse: ClickHouse, repo: ClickHouseMeterRepository, batches: int, prefix: str, size: int = 50
) -> Meter:
    """A SUM meter, then `batches` inserts of `size` events stored after it (not rolled up yet)."""
    m = sum_meter()
    repo.create(m)
    for b in range(batches):
        insert(clickhouse, "ns", batch(b, size), f"{prefix}-{b}")
    return m


def query(m: Meter) -> sql.Query:
    return sql.Query(
        meter=m,
        namespace="ns",
        start=T,
        end=T + timedelta(hours=6),
        window=WindowSize.HOUR,
        group_by=("m",),
        group_subject=True,
    )


def rows(ch: ClickHouse, q: sql.Query, *, raw: bool) -> list[tuple[Any, ...]]:
    """From raw events, or from the rollups alone (no tail: every stored event must be rolled up)."""
    text, params = sql.raw_query(ch.database, q) if raw else sql.build_query(ch.database, q)
    return sorted(
        (r.window_start, r.subject, tuple(r.group_by.items()), r.value)
        for r in shape_rows(q, ch.rows(text, parameters=params))
    )


class Crash(Exception):
    pass


class CrashBeforeDone(ClickHouseRoller):
    """A roller that dies after its rollup insert, before recording `done` (as a SIGKILL there would)."""

    def _mark(self, kind: str, at: datetime) -> None:
        if kind == "done" and self.marks().intent == at:
            raise Crash(at)
        super()._mark(kind, at)


@pytest.fixture
def repo(clickhouse: ClickHouse) -> ClickHouseMeterRepository:
    r = ClickHouseMeterRepository(clickhouse)
    r.migrate()
    return r


def test_a_roll_interrupted_after_its_insert_is_redone_and_counted_once(
    clickhouse: ClickHouse, repo: ClickHouseMeterRepository
) -> None:
    m = meter_with_batches(clickhouse, repo, 3, "redo")
    crashing = CrashBeforeDone(clickhouse)
    with pytest.raises(Crash):
        crashing.roll_once()  # the rollup insert is written; `done` is not
    intent, done = repo.roller.marks()
    assert intent > done
    redo = repo.roller.roll_once()
    assert redo is not None
    assert redo.redo
    assert (redo.lo, redo.hi) == (done, intent)
    assert redo.events == 150
    assert repo.roller.marks() == (intent, intent)
    q = query(m)
    assert rows(clickhouse, q, raw=False) == rows(clickhouse, q, raw=True)  # the redo's blocks were dropped
    assert sum(r[3] for r in rows(clickhouse, q, raw=False)) == sum(e["data"]["n"] for b in range(3) for e in batch(b))


def test_with_no_meter_a_roll_moves_the_mark_without_reading_events(
    clickhouse: ClickHouse, repo: ClickHouseMeterRepository
) -> None:
    for b in range(3):
        insert(clickhouse, "ns", batch(b), f"nometer-{b}")
    before = repo.roller.marks().done
    roll = repo.roller.roll_once()
    assert roll is not None
    assert roll.events == 0  # not read: no meter could count them
    assert repo.roller.marks() == (roll.hi, roll.hi)
    assert roll.lo == before < roll.hi
    # A meter created afterwards counts them (its backfill, before its cutover) and what comes after (rolls).
    m = sum_meter()
    repo.create(m)
    insert(clickhouse, "ns", batch(3), "nometer-3")
    while (later := repo.roller.roll_once()) is not None and later.events:
        pass
    q = query(m)
    assert rows(clickhouse, q, raw=False) == rows(clickhouse, q, raw=True)
    assert sum(r[3] for r in rows(clickhouse, q, raw=False)) == sum(e["data"]["n"] for b in range(4) for e in batch(b))


def test_stored_since_keeps_to_the_event_times_asked(clickhouse: ClickHouse, repo: ClickHouseMeterRepository) -> None:
    repo.roller.roll_once(force=True)
    done = repo.roller.marks().done
    insert(clickhouse, "ns", [{"id": "late", "time": T, "subject": "s1", "type": "call", "data": {"n": 1}}], "within")
    assert repo.roller.stored_since(done, "ns", "call", ("s1",))
    assert repo.roller.stored_since(done, "ns", "call", ("s1",), within=(T, T + timedelta(minutes=1)))
    assert not repo.roller.stored_since(done, "ns", "call", ("s1",), within=(T + timedelta(minutes=1), T + DAY))
    assert not repo.roller.stored_since(done, "ns", "call", ("s1",), within=(T - DAY, T))  # [from, to)
    assert not repo.roller.stored_since(done, "ns", "call", ("s2",), within=(T, T + DAY))


def test_a_backlog_rolls_in_bounded_ranges_of_whole_inserts(
    clickhouse: ClickHouse, repo: ClickHouseMeterRepository
) -> None:
    m = meter_with_batches(clickhouse, repo, 8, "backlog")
    repo.roller.max_events = 120  # at most ~two inserts of 50 per roll
    done: list[int] = []
    while (roll := repo.roller.roll_once()) is not None and roll.events:
        done.append(roll.events)
    assert sum(done) == 400
    assert len(done) >= 4, done
    assert all(n % 50 == 0 for n in done), done  # an insert never splits across rolls
    q = query(m)
    assert rows(clickhouse, q, raw=False) == rows(clickhouse, q, raw=True)


async def test_reads_while_rolls_run_are_exact(clickhouse: ClickHouse, repo: ClickHouseMeterRepository) -> None:
    """Everything is stored before the reads start; a thread then rolls it up in many small rolls while the
    service reads: every answer equals the raw one (rollups before the mark + raw tail, never both)."""
    m = meter_with_batches(clickhouse, repo, 12, "reads", size=40)
    q = query(m)
    expected = rows(clickhouse, q, raw=True)
    service = MeterService(repo, cache_seconds=0)
    await service._refresh()  # the meter is READY: reads take the rollup path (no roller task of its own)
    repo.roller.max_events = 40
    stop = threading.Event()
    rolled = [0]

    def roll() -> None:
        while not stop.is_set() and (r := repo.roller.roll_once()) is not None and r.events:
            rolled[0] += r.events

    roller = threading.Thread(target=roll)
    roller.start()
    answers = 0
    try:
        while roller.is_alive() or answers < 5:
            got = sorted((r.window_start, r.subject, tuple(r.group_by.items()), r.value) for r in await service.run(q))
            assert got == expected
            answers += 1
            await asyncio.sleep(0)
    finally:
        stop.set()
        roller.join(60)
    assert rolled[0] == 480
    assert answers >= 5
    assert rows(clickhouse, q, raw=False) == expected
    total = sum((r[3] for r in expected), Decimal(0))
    assert total == sum(e["data"]["n"] for b in range(12) for e in batch(b, 40))
