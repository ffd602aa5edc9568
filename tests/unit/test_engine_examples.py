"""Worked examples of the balance semantics (entitlements/engine/README.md), each computed by hand.

Monthly usage periods anchored at 2024-01-01 (day 0) unless a case says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import pytest

from entitlements.engine import (
    ISSUE_AFTER_RESET_GRANT_ID,
    EngineInputError,
    EntitlementTerms,
    Grant,
    ManualReset,
    Period,
    Recurrence,
    initial_snapshot,
    period_containing,
    plan_windows,
    run,
    windowed_history,
)
from tests.support.engine import T0, Event, day, evaluate, grant, monthly

D = Decimal


@dataclass
class Case:
    name: str
    terms: EntitlementTerms
    grants: list[Grant]
    events: list[Event]
    target: datetime
    balance: str
    overage: str = "0"
    usage: str | None = None
    balances: dict[str, str] | None = None
    resets: list[ManualReset] = field(default_factory=list)
    has_access: bool | None = None


def ev(d: float, v: int | str) -> Event:
    return (day(d), D(v))


CASES = [
    Case(
        "issue example: grant 100, min=max rollover 50, usage 110, preserveOverageAtReset -> 40",
        monthly(preserve_overage_at_reset=True),
        [grant("g", 100, min_rollover=D(50), max_rollover=D(50))],
        [ev(10, 110)],
        day(31),  # Feb 1: the reset
        balance="40",
        usage="0",
    ),
    Case(
        "same without preserving overage: the overage is forgiven -> 50",
        monthly(),
        [grant("g", 100, min_rollover=D(50), max_rollover=D(50))],
        [ev(10, 110)],
        day(32),
        balance="50",
        usage="0",
    ),
    Case(
        "before the reset: balance 0, overage 10, no access",
        monthly(preserve_overage_at_reset=True),
        [grant("g", 100, min_rollover=D(50), max_rollover=D(50))],
        [ev(10, 110)],
        day(30),
        balance="0",
        overage="10",
        usage="110",
        has_access=False,
    ),
    Case(
        "soft limit keeps access in overage",
        monthly(is_soft_limit=True),
        [grant("g", 100)],
        [ev(10, 110)],
        day(30),
        balance="0",
        overage="10",
        has_access=True,
    ),
    Case(
        "default rollover is 0: an unused grant is empty after the reset",
        monthly(),
        [grant("g", 100)],
        [ev(3, 30)],
        day(31),
        balance="0",
        usage="0",
    ),
    Case(
        "rollover capped by max: 70 left, max 60 -> 60; then usage 5 in February",
        monthly(),
        [grant("g", 100, max_rollover=D(60))],
        [ev(3, 30), ev(35, 5)],
        day(40),
        balance="55",
        usage="5",
    ),
    Case(
        "expiry mid-period: the earlier-expiring grant burns first, its rest is lost at expiry",
        monthly(),
        [grant("a", 100, expires_at=day(14)), grant("b", 50)],
        [ev(4, 30), ev(19, 20)],
        day(24),
        balance="30",
        usage="50",
        balances={"b": "30"},
    ),
    Case(
        "void mid-period ends the grant; later usage is overage",
        monthly(),
        [grant("a", 100, voided_at=day(9))],
        [ev(4, 40), ev(11, 10)],
        day(12),
        balance="0",
        overage="10",
        usage="50",
        has_access=False,
    ),
    Case(
        "void before activation: the grant never counts",
        monthly(),
        [grant("a", 100, effective_at=day(5), voided_at=day(4))],
        [ev(6, 1)],
        day(7),
        balance="0",
        overage="1",
    ),
    Case(
        "weekly recurrence tops up to the amount and pays carried overage",
        monthly(),
        [grant("r", 10, recurrence=Recurrence(Period.parse("WEEK"), T0))],
        [ev(1, 8), ev(8, 15)],  # Jan 2: 8; recur Jan 8 -> 10; Jan 9: 15 -> overage 5; recur Jan 15 -> 5
        day(15),
        balance="5",
        usage="23",
    ),
    Case(
        "priority: lower number burns first",
        monthly(),
        [grant("a", 100, priority=2), grant("b", 50, priority=1, created_at=day(0.5), effective_at=T0)],
        [ev(2, 60)],
        day(3),
        balance="90",
        balances={"a": "90", "b": "0"},
    ),
    Case(
        "same priority and expiry: earlier creation first",
        monthly(),
        [grant("x", 10, created_at=day(-1)), grant("a", 10, created_at=day(-2))],
        [ev(2, 15)],
        day(3),
        balance="5",
        balances={"a": "0", "x": "5"},
    ),
    Case(
        "all else equal: id decides",
        monthly(),
        [grant("b", 10), grant("a", 10)],
        [ev(2, 15)],
        day(3),
        balance="5",
        balances={"a": "0", "b": "5"},
    ),
    Case(
        "overage carried to a grant that becomes effective later",
        monthly(),
        [grant("a", 10), grant("b", 100, effective_at=day(4))],
        [ev(2, 25), ev(5, 5)],  # overage 15 on Jan 3, paid by b on Jan 5, then 5 more
        day(6),
        balance="80",
        usage="30",
        balances={"a": "0", "b": "80"},
    ),
    Case(
        "issueAfterReset refills every period; overage forgiven",
        monthly(issue_after_reset=D(100)),
        [],
        [ev(5, 130)],
        day(31),
        balance="100",
        balances={ISSUE_AFTER_RESET_GRANT_ID: "100"},
    ),
    Case(
        "issueAfterReset with preserved overage: 100 - 30",
        monthly(issue_after_reset=D(100), preserve_overage_at_reset=True),
        [],
        [ev(5, 130)],
        day(31),
        balance="70",
    ),
    Case(
        "expiry at the reset instant: no rollover",
        monthly(),
        [grant("a", 100, expires_at=day(31), max_rollover=D(100))],
        [],
        day(31),
        balance="0",
    ),
    Case(
        "recurrence at the reset instant wins over rollover",
        monthly(),
        [grant("a", 100, recurrence=Recurrence(Period.parse("MONTH"), T0))],
        [ev(3, 90)],
        day(31),
        balance="100",
    ),
    Case(
        "a grant effective at the reset instant keeps its amount",
        monthly(),
        [grant("a", 100, effective_at=day(31))],
        [ev(30, 5)],
        day(31),
        balance="100",
    ),
    Case(
        "grant effective before measureUsageFrom starts with its amount; earlier usage ignored",
        monthly(),
        [grant("a", 100, effective_at=day(-40))],
        [ev(-3, 1000), ev(3, 10)],
        day(4),
        balance="90",
        usage="10",
    ),
    Case(
        "manual reset without retainAnchor: new cadence from the reset",
        monthly(),
        [grant("a", 100, max_rollover=D(100))],
        [ev(3, 30), ev(12, 10), ev(33, 5)],  # 70 rolls over at Jan 10, no reset Feb 1
        day(35),
        balance="55",
        usage="15",
        resets=[ManualReset(day(9), retain_anchor=False)],
    ),
    Case(
        "manual reset with retainAnchor: the period still ends on Feb 1",
        monthly(),
        [grant("a", 100, max_rollover=D(100))],
        [ev(3, 30), ev(12, 10), ev(33, 5)],
        day(35),
        balance="55",
        usage="5",
        resets=[ManualReset(day(9), retain_anchor=True)],
    ),
    Case(
        "manual reset preserveOverage overrides the entitlement default",
        monthly(),
        [grant("a", 10, min_rollover=D(10), max_rollover=D(10))],
        [ev(3, 14)],
        day(9),
        balance="6",
        resets=[ManualReset(day(9), preserve_overage=True)],
    ),
    Case(
        "month-end anchor Jan 31: resets on Feb 29 and Mar 31",
        monthly(anchor=day(30), issue_after_reset=D(10)),
        [],
        [ev(58.5, 4), ev(59, 3)],  # day 59 = Feb 29 00:00, the boundary: it belongs to the new period
        day(89),  # Mar 30
        balance="7",
        usage="3",
    ),
    Case(
        "decimals stay exact",
        monthly(),
        [grant("a", "0.3"), grant("b", "0.1", priority=2)],
        [ev(1, "0.35")],
        day(2),
        balance="0.05",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_worked_example(case: Case) -> None:
    r = evaluate(case.terms, case.grants, case.events, case.target, resets=case.resets)
    assert r.balance == D(case.balance)
    assert r.overage == D(case.overage)
    if case.usage is not None:
        assert r.usage == D(case.usage)
    if case.balances is not None:
        assert {k: str(v) for k, v in r.balances.items()} == case.balances
    if case.has_access is not None:
        assert r.has_access is case.has_access


def test_issue_example_segments_and_ledger() -> None:
    terms = monthly(preserve_overage_at_reset=True)
    grants = [grant("g", 100, min_rollover=D(50), max_rollover=D(50))]
    r = evaluate(terms, grants, [ev(10, 110)], day(31))
    (seg,) = r.segments
    assert (seg.balance_at_start, seg.usage, seg.balance_at_end, seg.overage_created) == (D(100), D(110), D(0), D(10))
    assert r.ledger.rolled_over == D(50)
    assert r.total_available_grant_amount == D(50)
    (snap,) = r.snapshots
    assert snap.at == day(31)
    assert snap.balances == {"g": D(40)}
    assert snap.overage == 0
    assert (r.period_start, r.period_end) == (day(31), day(60))


def test_manual_reset_moves_period() -> None:
    terms, resets = monthly(), [ManualReset(day(9))]
    r = evaluate(terms, [], [], day(20), resets=resets)
    assert (r.period_start, r.period_end) == (day(9), day(40))  # Jan 10 -> Feb 10
    assert period_containing(terms, resets, r.final.at)[:2] == (day(9), day(40))
    kept = evaluate(terms, [], [], day(20), resets=[ManualReset(day(9), retain_anchor=True)])
    assert (kept.period_start, kept.period_end) == (day(9), day(31))


def test_month_end_anchor_period_bounds() -> None:
    r = evaluate(monthly(anchor=day(30)), [], [], day(70))
    assert (r.period_start, r.period_end) == (day(59), day(90))  # Feb 29 -> Mar 31
    assert list(
        plan_windows(initial_snapshot(monthly(anchor=day(30)), [], []), [], [], monthly(anchor=day(30)), day(125))
    ) == [T0, day(30), day(59), day(90), day(120), day(125)]


def test_total_available_counts_activations_and_recurrences() -> None:
    grants = [grant("a", 10, recurrence=Recurrence(Period.parse("WEEK"), T0)), grant("b", 5, effective_at=day(3))]
    r = evaluate(monthly(), grants, [ev(1, 4)], day(10))
    assert r.total_available_grant_amount == D(10 + 5 + 4)  # a, b, a's top-up on Jan 8
    assert r.balance == D(15)


def test_negative_window_usage_counts_as_zero() -> None:
    r = evaluate(monthly(), [grant("a", 10)], [ev(1, 5), ev(1.5, -8)], day(2))
    assert r.balance == D(10)
    assert r.ledger.negative_usage_ignored == D(3)


def test_run_refuses_bad_inputs() -> None:
    terms, grants = monthly(), [grant("a", 10, expires_at=day(5))]
    snap = initial_snapshot(terms, grants, [])
    with pytest.raises(EngineInputError, match="miss planned"):
        run(snap, grants, [], terms, [T0, day(10)], [D(1)])
    bounds = plan_windows(snap, grants, [], terms, day(10))
    with pytest.raises(EngineInputError, match="one usage value"):
        run(snap, grants, [], terms, bounds, [D(1)])
    with pytest.raises(EngineInputError, match="float"):
        run(snap, grants, [], terms, bounds, [1.0, D(0)])  # type: ignore[list-item]
    with pytest.raises(EngineInputError, match="stale"):
        run(snap, [*grants, grant("late", 5, effective_at=day(-1))], [], terms, bounds, [D(1), D(0)])
    with pytest.raises(EngineInputError, match="unique"):
        plan_windows(snap, [grants[0], grants[0]], [], terms, day(10))
    with pytest.raises(EngineInputError, match="float"):
        Grant(id="f", amount=1.5, effective_at=T0, created_at=T0)  # type: ignore[arg-type]


def test_windowed_history_groups_segments() -> None:
    grants = [grant("a", 100), grant("b", 50, effective_at=day(1.5))]
    edges = [day(0), day(1), day(2), day(3)]
    r = evaluate(monthly(), grants, [ev(0.5, 10), ev(1.2, 20), ev(1.7, 5), ev(2.5, 200)], day(3), extra=edges)
    rows = windowed_history(r.segments, edges)
    assert [(w.usage, w.balance_at_start, w.balance_at_end, w.overage_at_end) for w in rows] == [
        (D(10), D(100), D(90), D(0)),
        (D(25), D(90), D(115), D(0)),  # b (50) activates inside the window at day 1.5
        (D(200), D(115), D(0), D(85)),
    ]
    with pytest.raises(EngineInputError, match="segment boundary"):
        windowed_history(r.segments, [day(0), day(0.25)])


def test_amounts_beyond_precision_are_refused_not_rounded() -> None:
    huge = grant("a", "1" + "0" * 110)
    with pytest.raises(EngineInputError, match="significant digits"):
        evaluate(monthly(), [huge], [ev(1, "0.5")], day(2))


def test_cost_after_sixty_periods_is_that_of_one_period() -> None:
    terms = monthly(issue_after_reset=D(100))
    grants = [grant("a", 50, max_rollover=D(50)), grant("b", 10, recurrence=Recurrence(Period.parse("MONTH"), T0))]
    events = [ev(d + 0.5, 3) for d in range(0, 1830, 10)]
    long = evaluate(terms, grants, events, day(1830))
    assert len(long.snapshots) == 60  # one per period start, for the shell to persist
    last = long.snapshots[-1]
    plan = plan_windows(last, grants, [], terms, day(1830))
    assert plan == [last.at, day(1830)]  # the read after 60 periods plans one window, as after one
    again = evaluate(terms, grants, events, day(1830), snapshot=last)
    assert again.final == long.final


# ---- totalAvailableGrantAmount = balance + everything burnt from grants in the current period ----


@pytest.mark.parametrize(
    ("name", "grants", "events", "target", "resets", "terms", "total"),
    [
        (
            "a 100 grant that expired after 10 were used: 10, not 100",
            [grant("g", 100, expires_at=day(5))],
            [ev(1, 10)],
            day(10),
            [],
            monthly(),
            "10",
        ),
        (
            "a voided grant's unused remainder does not count, its burns do",
            [grant("v", 100, voided_at=day(5)), grant("k", 50, priority=5)],
            [ev(1, 30), ev(6, 20)],
            day(10),
            [],
            monthly(),
            "80",
        ),  # 30 burnt from v + 20 burnt from k + k's 30 left
        ("unused grants count in full", [grant("g", 100), grant("h", 40)], [ev(1, 25)], day(10), [], monthly(), "140"),
        (
            "overage paid back by a later grant counts as burnt",
            [grant("a", 10), grant("b", 100, effective_at=day(5))],
            [ev(1, 25)],
            day(10),
            [],
            monthly(),
            "110",
        ),
        (
            "a period boundary restarts it (rollover balance only)",
            [grant("g", 100, max_rollover=D(100))],
            [ev(10, 30), ev(35, 5)],
            day(40),
            [],
            monthly(),
            "70",
        ),
        (
            "at a reset it restarts from the preserved-overage burn",
            [grant("a", 10, max_rollover=D(0)), grant("b", 100, effective_at=day(20), max_rollover=D(100))],
            [ev(1, 25)],
            day(25),
            [ManualReset(day(10), retain_anchor=True, preserve_overage=True)],
            monthly(),
            "100",
        ),  # overage 15 preserved at the reset, paid by b at day 20: 85 left + 15 burnt
    ],
)
def test_total_available_grant_amount(
    name: str,
    grants: list[Grant],
    events: list[Event],
    target: datetime,
    resets: list[ManualReset],
    terms: EntitlementTerms,
    total: str,
) -> None:
    result = evaluate(terms, grants, events, target, resets)
    assert result.total_available_grant_amount == D(total), name
    assert result.total_available_grant_amount >= result.balance
