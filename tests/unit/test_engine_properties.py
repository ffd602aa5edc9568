"""Invariants of the balance engine over random grants, resets and usage (hypothesis).

All instants are whole hours from T0, so an independent event-by-event reference model can step hour by
hour: it never plans windows, it burns each usage event on its own, in time order.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entitlements.engine import (
    EntitlementTerms,
    Grant,
    ManualReset,
    Period,
    Recurrence,
    Result,
    Snapshot,
    burndown,
    initial_snapshot,
    plan_windows,
    snapshot_is_usable,
)
from tests.support.engine import T0, Event, evaluate

H = timedelta(hours=1)
HORIZON = 24 * 75  # hours


def hour(n: int) -> datetime:
    return T0 + n * H


amounts = st.integers(0, 2000).map(lambda c: Decimal(c) / 10)  # one decimal place, exact


@st.composite
def grants_st(draw: st.DrawFn, gid: str) -> Grant:
    eff = draw(st.integers(-200, HORIZON))
    life = draw(st.none() | st.integers(1, HORIZON))
    void = draw(st.none() | st.integers(-50, HORIZON))
    rec = draw(st.none() | st.sampled_from(["PT12H", "P1D", "P5D", "P1W", "P1M"]))
    lo = draw(amounts)
    return Grant(
        id=gid,
        amount=draw(amounts),
        priority=draw(st.integers(1, 3)),
        effective_at=hour(eff),
        created_at=hour(eff - draw(st.integers(0, 3))),
        expires_at=None if life is None else hour(eff + life),
        voided_at=None if void is None else hour(void),
        min_rollover=lo,
        max_rollover=lo + draw(amounts),
        recurrence=None if rec is None else Recurrence(Period.parse(rec), hour(eff + draw(st.integers(0, 30)))),
    )


@dataclass
class World:
    terms: EntitlementTerms
    grants: list[Grant]
    resets: list[ManualReset]
    events: list[Event]
    target: datetime


@st.composite
def worlds(draw: st.DrawFn) -> World:
    start = draw(st.integers(0, 48))
    terms = EntitlementTerms(
        usage_period=Recurrence(
            Period.parse(draw(st.sampled_from(["P1W", "P1M", "PT36H", "P10D"]))), hour(draw(st.integers(-500, 500)))
        ),
        measure_usage_from=hour(start),
        is_soft_limit=draw(st.booleans()),
        issue_after_reset=draw(st.none() | amounts),
        issue_after_reset_priority=draw(st.integers(1, 3)),
        preserve_overage_at_reset=draw(st.booleans()),
    )
    n = draw(st.integers(0, 4))
    grants = [draw(grants_st(f"g{i}")) for i in range(n)]
    resets = draw(
        st.lists(
            st.builds(
                ManualReset,
                effective_at=st.integers(start - 10, HORIZON).map(hour),
                retain_anchor=st.booleans(),
                preserve_overage=st.none() | st.booleans(),
            ),
            max_size=3,
        )
    )
    events = draw(
        st.lists(st.tuples(st.integers(-20, HORIZON).map(hour), st.integers(-20, 400).map(Decimal)), max_size=40)
    )
    target = hour(draw(st.integers(start, HORIZON)))
    return World(terms, grants, resets, events, target)


def reference(w: World) -> tuple[dict[str, Decimal], Decimal, Decimal]:
    """Balances, overage and period usage at w.target, stepping hour by hour and burning event by event."""
    issued = w.terms.issue_grant()
    grants = [*w.grants, *([issued] if issued is not None else [])]
    order = sorted(
        grants,
        key=lambda g: (g.priority, g.expires_at is None, g.expires_at or T0, g.created_at, g.id),
    )
    start = w.terms.measure_usage_from
    resets: dict[datetime, list[ManualReset]] = {}
    for r in w.resets:
        if r.effective_at >= start:
            resets.setdefault(r.effective_at, []).append(r)
    cadence = w.terms.usage_period
    bal: dict[str, Decimal] = {}
    overage = usage = Decimal(0)

    def burn(x: Decimal) -> Decimal:
        for g in order:
            if g.id in bal and x > 0:
                take = min(bal[g.id], x)
                bal[g.id] -= take
                x -= take
        return x

    t = start
    while True:
        first = t == start
        for gid in [gid for gid in bal if not next(g for g in grants if g.id == gid).active_at(t)]:
            del bal[gid]
        manual = resets.get(t, [])
        if manual and any(not r.retain_anchor for r in manual):
            cadence = Recurrence(cadence.interval, t)
        if not first and (manual or cadence.at_or_before(t) == t):
            for g in grants:
                if g.id in bal:
                    bal[g.id] = min(g.max_rollover, max(g.min_rollover, bal[g.id]))
            flags = [r.preserve_overage for r in manual if r.preserve_overage is not None]
            preserve = any(flags) if flags else w.terms.preserve_overage_at_reset
            if not preserve:
                overage = Decimal(0)
            usage = Decimal(0)
        for g in grants:
            if g.active_at(t):
                activates = g.id not in bal and (first or g.effective_at == t)
                recurs = g.id in bal and g.recurrence is not None and g.recurrence.at_or_before(t) == t
                if activates or recurs:
                    bal[g.id] = g.amount
        overage = burn(overage)
        if t >= w.target:
            return bal, overage, usage
        in_hour = [v for (et, v) in w.events if t <= et < t + H]
        net = sum(in_hour, Decimal(0))
        # The engine's documented unit is the window; events inside one hour are a single window here
        # only when their net is non-negative, so compare with the same clamp at hour granularity.
        net = max(net, Decimal(0))
        usage += net
        overage += burn(net)
        t += H


def hourly(w: World) -> list[datetime]:
    return [hour(h) for h in range(-600, HORIZON + 1)]


def engine(w: World, grants: list[Grant] | None = None, resets: list[ManualReset] | None = None) -> Result:
    # Hour split points make negative-usage clamping act per hour, as in the reference.
    return evaluate(
        w.terms,
        w.grants if grants is None else grants,
        w.events,
        w.target,
        resets=w.resets if resets is None else resets,
        extra=hourly(w),
    )


def state(s: Snapshot) -> tuple[object, ...]:
    return (s.at, dict(s.balances), s.overage, s.period_start, s.period, s.usage_in_period, s.burnt_in_period)


common = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@common
@given(worlds())
def test_engine_equals_event_by_event_reference(w: World) -> None:
    r = engine(w)
    bal, overage, usage = reference(w)
    assert dict(r.balances) == bal
    assert r.overage == overage
    assert r.usage == usage


@common
@given(worlds())
def test_conservation_and_sign_invariants(w: World) -> None:
    snap = initial_snapshot(w.terms, w.grants, w.resets)
    r = evaluate(w.terms, w.grants, w.events, w.target, resets=w.resets)
    led = r.ledger
    before = snap.balance - snap.overage
    flows = led.activated + led.recurred + led.rolled_over - led.ended - led.usage + led.overage_forgiven
    assert before + flows == r.balance - r.overage
    assert led.usage == sum((s.usage for s in r.segments), Decimal(0))
    assert all(b >= 0 for b in r.balances.values())
    assert r.overage >= 0
    assert r.overage == 0 or r.balance == 0
    assert r.has_access == (w.terms.is_soft_limit or r.balance > 0)
    for seg in r.segments:
        burnt = sum((u.usage for u in seg.grant_usages), Decimal(0))
        assert burnt + seg.overage_created == seg.usage
        assert seg.balance_at_start - burnt == seg.balance_at_end


@common
@given(worlds(), st.randoms(use_true_random=False))
def test_determinism_and_order_independence(w: World, rnd: random.Random) -> None:
    a = evaluate(w.terms, w.grants, w.events, w.target, resets=w.resets)
    grants, resets, events = list(w.grants), list(w.resets), list(w.events)
    rnd.shuffle(grants)
    rnd.shuffle(resets)
    rnd.shuffle(events)
    b = evaluate(w.terms, grants, events, w.target, resets=resets)
    assert state(a.final) == state(b.final)
    assert a.final.inputs_digest == b.final.inputs_digest
    assert a.segments == b.segments


@common
@given(worlds(), st.integers(0, HORIZON))
def test_snapshot_equivalence_and_cost(w: World, mid_hour: int) -> None:
    mid = min(max(hour(mid_hour), w.terms.measure_usage_from), w.target)
    # Hour split points in every run: negative net usage is clamped per window, so the runs must share windows.
    full = evaluate(w.terms, w.grants, w.events, w.target, resets=w.resets, extra=hourly(w))
    half = evaluate(w.terms, w.grants, w.events, mid, resets=w.resets, extra=hourly(w))
    snap = Snapshot.from_dict(half.final.to_dict())  # as the shell would persist and load it
    assert snapshot_is_usable(snap, w.terms, w.grants, w.resets)
    rest = evaluate(w.terms, w.grants, w.events, w.target, resets=w.resets, snapshot=snap, extra=hourly(w))
    assert state(rest.final) == state(full.final)
    assert (rest.period_start, rest.period_end) == (full.period_start, full.period_end)
    assert rest.total_available_grant_amount == full.total_available_grant_amount
    # Cost: from the snapshot, only the windows after it are planned, and they are the full plan's tail.
    plan_full = plan_windows(initial_snapshot(w.terms, w.grants, w.resets), w.grants, w.resets, w.terms, w.target)
    plan_rest = plan_windows(snap, w.grants, w.resets, w.terms, w.target)
    assert plan_rest == sorted({mid} | {b for b in plan_full if b > mid})
    # Every snapshot emitted at a reset is also a valid starting point.
    for s in full.snapshots:
        again = evaluate(w.terms, w.grants, w.events, w.target, resets=w.resets, snapshot=s, extra=hourly(w))
        assert state(again.final) == state(full.final)


@common
@given(worlds(), st.lists(st.integers(0, HORIZON), max_size=30))
def test_extra_split_points_change_nothing(w: World, cuts: list[int]) -> None:
    events = [(t, v) for t, v in w.events if v >= 0]  # negative usage is clamped per window by definition
    a = evaluate(w.terms, w.grants, events, w.target, resets=w.resets)
    b = evaluate(w.terms, w.grants, events, w.target, resets=w.resets, extra=[hour(c) for c in cuts])
    assert state(a.final) == state(b.final)
    assert a.ledger == b.ledger


@common
@given(worlds(), st.integers(-200, HORIZON))
def test_backdated_inputs_invalidate_snapshots(w: World, when: int) -> None:
    snap = evaluate(w.terms, w.grants, w.events, w.target, resets=w.resets).final
    g = Grant(id="new", amount=Decimal(5), effective_at=hour(when), created_at=hour(when))
    usable = snapshot_is_usable(snap, w.terms, [*w.grants, g], w.resets)
    assert usable == (g.effective_at > snap.at)
    r = ManualReset(hour(when))
    usable = snapshot_is_usable(snap, w.terms, w.grants, [*w.resets, r])
    merged_into_same = any(x.effective_at == r.effective_at and not x.retain_anchor for x in w.resets)
    if not merged_into_same:  # an identical reset at the same instant merges into one: nothing changed
        assert usable == (r.effective_at > snap.at or r.effective_at < w.terms.measure_usage_from)


@common
@given(worlds(), st.lists(st.integers(0, HORIZON), max_size=30))
def test_burndown_is_the_same_for_every_display_window(w: World, cuts: list[int]) -> None:
    """OpenMeter's burn-down segments split at events only: display window edges never show in them."""
    events = [(t, v) for t, v in w.events if v >= 0]  # negative usage is clamped per window by definition
    a = evaluate(w.terms, w.grants, events, w.target, resets=w.resets)
    b = evaluate(w.terms, w.grants, events, w.target, resets=w.resets, extra=[hour(c) for c in cuts])
    segments = burndown(a.segments, a.closed_by)
    assert segments == burndown(b.segments, b.closed_by)
    for seg, nxt in itertools.pairwise(segments):
        assert seg.end == nxt.start
    for seg in segments:
        burnt = sum((u.usage for u in seg.grant_usages), Decimal(0))
        assert seg.balance_at_start - burnt == seg.balance_at_end
        assert seg.overage_at_start + seg.usage - burnt == seg.overage_at_end
        assert seg.start < seg.end or (seg.opened_by is not None and (seg.opened_by.reset or seg.opened_by.recurred))
    closed = a.closed_by
    if segments and closed is not None and (not closed.phase or closed.reset or closed.recurred):
        assert segments[-1].end == w.target
        assert dict(segments[-1].balances_at_end) == dict(a.balances)
        assert segments[-1].overage_at_end == a.overage
