"""The balance computation: fold windows of usage over the grants, from a snapshot to a target instant.

Pure. At each boundary the events at that instant are applied in a fixed order (README.md, "One
instant"): ends, reset, recurrences, activations, then the carried overage is burnt. Between two
boundaries the set of usable grants is constant, so a window's usage is burnt at its end in burn order;
that equals burning every event one by one in time order (balances only fall inside a window).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Context, Decimal, DivisionByZero, Inexact, InvalidOperation, Overflow, localcontext

from entitlements.engine.model import (
    ZERO,
    EntitlementTerms,
    Grant,
    GrantUsage,
    Instant,
    Ledger,
    ManualReset,
    Result,
    Segment,
    Snapshot,
    burn_order_key,
)
from entitlements.engine.period import EngineInputError, Recurrence, require_utc
from entitlements.engine.timeline import (
    ResetAt,
    all_grants,
    inputs_digest,
    merged_resets,
    moved_cadence,
    plan_windows,
    snapshot_is_usable,
)


@dataclass(slots=True)
class _State:
    at: datetime
    balances: dict[str, Decimal]
    overage: Decimal
    period_start: datetime
    period: Recurrence
    usage_in_period: Decimal
    burnt_in_period: Decimal
    ledger: dict[str, Decimal] = field(default_factory=lambda: dict.fromkeys(Ledger.__slots__, ZERO))

    def snapshot(self, digest: str) -> Snapshot:
        return Snapshot(
            at=self.at,
            balances=dict(self.balances),
            overage=self.overage,
            period_start=self.period_start,
            period=self.period,
            usage_in_period=self.usage_in_period,
            burnt_in_period=self.burnt_in_period,
            inputs_digest=digest,
        )


class _Inputs:
    """Grants and resets indexed for the walk."""

    def __init__(
        self, terms: EntitlementTerms, grants: Sequence[Grant], resets: Sequence[ManualReset], since: datetime
    ) -> None:
        self.terms = terms
        # Grants that ended at or before `since` cannot matter any more: skipping them keeps a read's work
        # proportional to what happened since the snapshot.
        self.grants = {g.id: g for g in all_grants(terms, grants) if g.end is None or g.end > since}
        self.order = {g.id: k for k, g in enumerate(sorted(self.grants.values(), key=burn_order_key))}
        self.resets = merged_resets(terms, resets)

    def burn(self, st: _State, amount: Decimal) -> tuple[Decimal, list[GrantUsage]]:
        """Burn `amount` from the usable grants in burn order; return the uncovered rest and the per-grant use."""
        used: list[GrantUsage] = []
        for gid in sorted(st.balances, key=self.order.__getitem__):
            if amount <= 0:
                break
            take = min(st.balances[gid], amount)
            if take > 0:
                st.balances[gid] -= take
                st.burnt_in_period += take
                amount -= take
                used.append(GrantUsage(gid, take))
        return amount, used

    def apply_instant(self, st: _State, t: datetime, first: bool) -> Instant:
        """Apply every event at instant t and say what happened. `first`: the initial instant."""
        st.at = t
        led = st.ledger
        ended = [gid for gid in st.balances if not self.grants[gid].active_at(t)]
        for gid in ended:
            led["ended"] += st.balances.pop(gid)
        manual = self.resets.get(t)
        is_reset = manual is not None or (not first and st.period.at_or_before(t) == t)
        if is_reset and not first:
            self._reset(st, t, manual)
        elif first:
            if manual is not None:
                st.period = moved_cadence(st.period, manual)
            st.period_start = st.period.at_or_before(t)
        activated = recurred = False
        for g in self.grants.values():
            if not g.active_at(t):
                continue
            if g.id not in st.balances:
                if first or g.effective_at == t:
                    st.balances[g.id] = g.amount
                    led["activated"] += g.amount
                    activated = True
            elif g.recurrence is not None and g.recurrence.at_or_before(t) == t:
                top_up = g.amount - st.balances[g.id]
                st.balances[g.id] = g.amount
                led["recurred"] += top_up
                recurred = True
        before, overage = dict(st.balances), st.overage
        payback: list[GrantUsage] = []
        if st.overage > 0:
            st.overage, payback = self.burn(st, st.overage)
        reset = is_reset and not first
        return Instant(
            t, reset, recurred, reset or recurred or activated or bool(ended), before, overage, tuple(payback)
        )

    def _reset(self, st: _State, t: datetime, manual: ResetAt | None) -> None:
        led = st.ledger
        for gid, b in st.balances.items():
            nb = self.grants[gid].rollover(b)
            led["rolled_over"] += nb - b
            st.balances[gid] = nb
        preserve = self.terms.preserve_overage_at_reset
        if manual is not None:
            st.period = moved_cadence(st.period, manual)
            if manual.preserve_overage is not None:
                preserve = manual.preserve_overage
        if not preserve:
            led["overage_forgiven"] += st.overage
            st.overage = ZERO
        st.period_start = t
        st.usage_in_period = ZERO
        # totalAvailableGrantAmount restarts: what the new period burns (first the preserved overage) counts.
        st.burnt_in_period = ZERO


#: Every computation runs in this context: an amount needing more than 100 significant digits raises
#: (EngineInputError) instead of being rounded, so balances are exact or refused.
EXACT = Context(prec=100, traps=[InvalidOperation, DivisionByZero, Overflow, Inexact])


@contextmanager
def _exact() -> Iterator[None]:
    try:
        with localcontext(EXACT):
            yield
    except Inexact as e:
        raise EngineInputError("amounts need more than 100 significant digits") from e


def initial_snapshot(terms: EntitlementTerms, grants: Sequence[Grant], resets: Sequence[ManualReset]) -> Snapshot:
    """The state at terms.measure_usage_from: grants usable then hold their amount, nothing is used yet.

    Grants effective earlier activate at measure_usage_from with their full amount; a manual reset at that
    instant only moves the cadence (there is nothing to roll over).
    """
    ins = _Inputs(terms, grants, resets, terms.measure_usage_from)
    start = terms.measure_usage_from
    st = _State(start, {}, ZERO, start, terms.usage_period, ZERO, ZERO)
    with _exact():
        ins.apply_instant(st, start, first=True)
    return st.snapshot(inputs_digest(terms, grants, resets, start))


def run(
    snapshot: Snapshot,
    grants: Sequence[Grant],
    resets: Sequence[ManualReset],
    terms: EntitlementTerms,
    boundaries: Sequence[datetime],
    usage: Sequence[Decimal],
) -> Result:
    """Compute the state at boundaries[-1] from `snapshot`, given usage[i] = usage in [b_i, b_i+1).

    boundaries must start at snapshot.at, increase strictly and contain every instant `plan_windows` plans
    between its first and last element (extra split points are allowed), and the snapshot must be usable
    (`snapshot_is_usable`) for these inputs. Raises EngineInputError otherwise.
    Work is proportional to the number of windows times the number of usable grants.
    """
    bounds = [require_utc(b, "boundary") for b in boundaries]
    if not bounds or bounds[0] != snapshot.at:
        raise EngineInputError("boundaries must start at the snapshot instant")
    if len(usage) != len(bounds) - 1:
        raise EngineInputError("need one usage value per window", windows=len(bounds) - 1, usage=len(usage))
    if any(a >= b for a, b in itertools.pairwise(bounds)):
        raise EngineInputError("boundaries must increase strictly")
    if not snapshot_is_usable(snapshot, terms, grants, resets):
        raise EngineInputError("snapshot is stale: an input before its instant changed", at=snapshot.at.isoformat())
    missing = set(plan_windows(snapshot, grants, resets, terms, bounds[-1])) - set(bounds)
    if missing:
        raise EngineInputError("boundaries miss planned instants", first_missing=min(missing).isoformat())

    with _exact():
        return _run(snapshot, grants, resets, terms, bounds, usage)


def _run(
    snapshot: Snapshot,
    grants: Sequence[Grant],
    resets: Sequence[ManualReset],
    terms: EntitlementTerms,
    bounds: list[datetime],
    usage: Sequence[Decimal],
) -> Result:
    ins = _Inputs(terms, grants, resets, snapshot.at)
    st = _State(
        snapshot.at,
        dict(snapshot.balances),
        snapshot.overage,
        snapshot.period_start,
        snapshot.period,
        snapshot.usage_in_period,
        snapshot.burnt_in_period,
    )
    segments: list[Segment] = []
    snapshots: list[Snapshot] = []
    opened_by: Instant | None = None
    for i, raw in enumerate(usage):
        start, end = bounds[i], bounds[i + 1]
        if isinstance(raw, float):
            raise EngineInputError("usage must be Decimal, never float")
        u = Decimal(raw)
        if u < 0:
            st.ledger["negative_usage_ignored"] -= u
            u = ZERO
        at_start, over_start = dict(st.balances), st.overage
        rest, used = ins.burn(st, u)
        st.overage += rest
        st.usage_in_period += u
        st.ledger["usage"] += u
        segments.append(
            Segment(
                start,
                end,
                u,
                over_start,
                st.overage,
                rest,
                at_start,
                dict(st.balances),
                tuple(used),
                st.period_start,
                opened_by is not None and opened_by.reset,
                opened_by,
            )
        )
        opened_by = ins.apply_instant(st, end, first=False)
        if opened_by.reset:
            snapshots.append(st.snapshot(inputs_digest(terms, grants, resets, end)))

    final = st.snapshot(inputs_digest(terms, grants, resets, st.at))
    balance = final.balance
    return Result(
        at=st.at,
        balances=final.balances,
        balance=balance,
        usage=st.usage_in_period,
        overage=st.overage,
        total_available_grant_amount=balance + st.burnt_in_period,
        has_access=terms.is_soft_limit or balance > 0,
        period_start=st.period_start,
        period_end=_period_end(st.period, st.at, ins.resets),
        segments=tuple(segments),
        snapshots=tuple(snapshots),
        final=final,
        ledger=Ledger(**st.ledger),
        closed_by=opened_by,
    )


def _period_end(period: Recurrence, at: datetime, resets: Mapping[datetime, ResetAt]) -> datetime:
    auto = period.after(at)
    manual = [t for t in resets if at < t < auto]
    return min(manual, default=auto)
