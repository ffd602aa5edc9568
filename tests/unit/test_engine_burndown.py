"""Worked examples of the burn-down history (OpenMeter's segments: credit/engine/run.go, reset.go, burnphase.go).

Each row: (start, end, grantBalancesAtStart, usage, grantUsages, grantBalancesAtEnd, overage at end), in days
from 2024-01-01 and whole credits. Monthly usage periods anchored at day 0 unless a case says otherwise.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest

from entitlements.engine import EntitlementTerms, Grant, ManualReset, Period, Recurrence, Segment, burndown
from tests.support.engine import T0, Event, day, evaluate, grant, monthly

D = Decimal
Row = tuple[float, float, dict[str, int], int, dict[str, int], dict[str, int], int]


def ev(d: float, v: int) -> Event:
    return (day(d), D(v))


def rows(segments: list[Segment]) -> list[Row]:
    def days(t: datetime) -> float:
        return (t - T0).total_seconds() / 86400

    def ints(m: object) -> dict[str, int]:
        assert isinstance(m, dict)
        return {k: int(v) for k, v in m.items()}

    return [
        (
            days(s.start),
            days(s.end),
            ints(dict(s.balances_at_start)),
            int(s.usage),
            ints({u.grant_id: u.usage for u in s.grant_usages}),
            ints(dict(s.balances_at_end)),
            int(s.overage_at_end),
        )
        for s in segments
    ]


def history(
    terms: EntitlementTerms,
    grants: list[Grant],
    events: list[Event],
    to: float,
    resets: list[ManualReset] | None = None,
    edges: list[float] | None = None,
) -> list[Row]:
    r = evaluate(terms, grants, events, day(to), resets=resets or [], extra=[day(e) for e in edges or []])
    return rows(burndown(r.segments, r.closed_by))


WEEKLY = Recurrence(Period.parse("WEEK"), T0)


@pytest.mark.parametrize(
    ("name", "terms", "grants", "events", "to", "resets", "expected"),
    [
        (
            "a grant activating with 25 overage outstanding starts at 100; the payback is burnt inside the segment",
            monthly(),
            [grant("a", 100), grant("b", 100, effective_at=day(10))],
            [ev(5, 125), ev(12, 10)],
            20,
            [],
            [
                (0, 10, {"a": 100}, 125, {"a": 100}, {"a": 0}, 25),
                (10, 20, {"a": 0, "b": 100}, 10, {"b": 35}, {"a": 0, "b": 65}, 0),
            ],
        ),
        (
            "a period reset adds a zero-length segment: rollover, then the preserved overage burnt at the reset",
            monthly(preserve_overage_at_reset=True),
            [grant("g", 100, min_rollover=D(50), max_rollover=D(50))],
            [ev(10, 110), ev(35, 5)],
            40,
            [],
            [
                (0, 31, {"g": 100}, 110, {"g": 100}, {"g": 0}, 10),
                (31, 31, {"g": 50}, 0, {"g": 10}, {"g": 40}, 0),
                (31, 40, {"g": 40}, 5, {"g": 5}, {"g": 35}, 0),
            ],
        ),
        (
            "a history ending at a reset ends with the state after it, not the pre-reset balances",
            monthly(preserve_overage_at_reset=True),
            [grant("g", 100, min_rollover=D(50), max_rollover=D(50))],
            [ev(10, 110)],
            31,
            [],
            [
                (0, 31, {"g": 100}, 110, {"g": 100}, {"g": 0}, 10),
                (31, 31, {"g": 50}, 0, {"g": 10}, {"g": 40}, 0),
            ],
        ),
        (
            "a manual reset without preserved overage: the zero-length segment forgives it",
            monthly(),
            [grant("g", 100, max_rollover=D(100))],
            [ev(2, 30)],
            8,
            [ManualReset(day(5))],
            [
                (0, 5, {"g": 100}, 30, {"g": 30}, {"g": 70}, 0),
                (5, 5, {"g": 70}, 0, {}, {"g": 70}, 0),
                (5, 8, {"g": 70}, 0, {}, {"g": 70}, 0),
            ],
        ),
        (
            "a recurrence starts a segment even when the grant was full; one at the end adds [to, to]",
            monthly(),
            [grant("r", 10, recurrence=WEEKLY)],
            [ev(8, 3)],
            14,
            [],
            [
                (0, 7, {"r": 10}, 0, {}, {"r": 10}, 0),
                (7, 14, {"r": 10}, 3, {"r": 3}, {"r": 7}, 0),
                (14, 14, {"r": 10}, 0, {}, {"r": 10}, 0),
            ],
        ),
        (
            "expiry and void split; a grant that ended stays in the balances of the segment it ended",
            monthly(),
            [
                grant("e", 20, expires_at=day(3)),
                grant("v", 50, voided_at=day(6), priority=2),
                grant("k", 5, priority=9),
            ],
            [ev(1, 10), ev(4, 60)],
            9,
            [],
            [
                (0, 3, {"e": 20, "v": 50, "k": 5}, 10, {"e": 10}, {"e": 10, "v": 50, "k": 5}, 0),
                (3, 6, {"v": 50, "k": 5}, 60, {"v": 50, "k": 5}, {"v": 0, "k": 0}, 5),
                (6, 9, {"k": 0}, 0, {}, {"k": 0}, 5),
            ],
        ),
    ],
)
def test_burndown_segments(
    name: str,
    terms: EntitlementTerms,
    grants: list[Grant],
    events: list[Event],
    to: float,
    resets: list[ManualReset],
    expected: list[Row],
) -> None:
    assert history(terms, grants, events, to, resets) == expected, name
    # The same for any display windows: hourly and daily edges never split a segment.
    assert history(terms, grants, events, to, resets, edges=[h / 24 for h in range(int(to * 24))]) == expected
