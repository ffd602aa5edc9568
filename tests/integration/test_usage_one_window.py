"""A balance read from a snapshot asks for one window [snapshot, now): the SQL skips the per-row window
search for it (sql._one_window). The answer must be the events' exact sum, and equal to the same range
split into several windows, across hour rollups, minute rollups and raw edges."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from aggregator import sql
from aggregator.meter import parse_meter
from aggregator.query import shape_rows
from aggregator.repository import ClickHouseMeterRepository
from common.clickhouse import ClickHouse
from tests.support.meter_events import insert

pytestmark = pytest.mark.integration

BASE = datetime(2024, 3, 1, tzinfo=UTC)


def offsets() -> list[timedelta]:
    """Event times spread over two days: on hours, on minutes and between them (milliseconds)."""
    return [timedelta(minutes=7 * i, seconds=i % 60, milliseconds=(37 * i) % 1000) for i in range(400)]


def usage(ch: ClickHouse, q: sql.Query) -> list[Decimal]:
    text, params = sql.build_query(ch.database, q)
    rows = shape_rows(q, ch.rows(text, parameters=params))
    bounds = q.boundaries or (q.start, q.end)
    out = [Decimal(0)] * (len(bounds) - 1)
    for r in rows:
        out[bounds.index(r.window_start)] = Decimal(str(r.value))
    return out


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (BASE, BASE + timedelta(days=2)),  # whole hours: hour rollup only
        (BASE + timedelta(minutes=13), BASE + timedelta(hours=30, minutes=1)),  # minute + hour rollups
        (BASE + timedelta(minutes=13, milliseconds=250), BASE + timedelta(hours=30, seconds=17, milliseconds=5)),
        (BASE + timedelta(hours=5, seconds=1), BASE + timedelta(hours=5, seconds=59)),  # inside one minute
    ],
)
def test_one_window_equals_the_events_and_the_split_windows(
    clickhouse: ClickHouse, start: datetime, end: datetime
) -> None:
    repo = ClickHouseMeterRepository(clickhouse)
    repo.migrate()
    meter = parse_meter(
        {"slug": "m_one", "aggregation": "SUM", "eventType": "t", "valueProperty": "$.v"},
        meter_id=uuid.uuid4().hex,
        namespace=None,
    )
    repo.reconcile([meter])
    ns = "ns_" + uuid.uuid4().hex[:8]
    events = [
        {"id": f"e{i}", "time": BASE + d, "subject": "s1", "type": "t", "data": {"v": f"{i}.5"}}
        for i, d in enumerate(offsets())
    ]
    events.append({"id": "other", "time": start, "subject": "s2", "type": "t", "data": {"v": 1000}})
    insert(clickhouse, ns, events, f"{ns}:0")
    repo.roller.roll_once()  # the rollup tiers hold them (the query reads no raw tail here)

    def expected(lo: datetime, hi: datetime) -> Decimal:
        return sum((Decimal(f"{i}.5") for i, d in enumerate(offsets()) if lo <= BASE + d < hi), Decimal(0))

    one = sql.Query(meter=meter, namespace=ns, start=start, end=end, boundaries=(start, end), subjects=("s1",))
    assert "arrayFirstIndex" not in sql.build_query(clickhouse.database, one)[0]
    assert usage(clickhouse, one) == [expected(start, end)]

    middle = start + (end - start) / 3
    split = sql.Query(
        meter=meter, namespace=ns, start=start, end=end, boundaries=(start, middle, end), subjects=("s1",)
    )
    assert usage(clickhouse, split) == [expected(start, middle), expected(middle, end)]
