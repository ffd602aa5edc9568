"""The history endpoint's two views of the engine's windows. Pure.

`windowed_history` groups the engine's segments into display windows: the shell passes the display window
edges to `plan_windows` as `extra`, so every edge is a segment boundary and each display window is an
exact union of segments. `burndown` regroups the same segments into OpenMeter's burn-down segments, which
split only where an event happens, so they are the same whatever the display windows are.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal

from entitlements.engine.model import ZERO, GrantUsage, Instant, Segment
from entitlements.engine.period import EngineInputError


@dataclass(frozen=True, slots=True)
class HistoryWindow:
    """Usage in [start, end) and the balance at both ends (OpenMeter's windowed history row).

    balance_at_start: after the events at `start`; balance_at_end: after the last window's usage, before
    the events at `end`. overage_at_end likewise.
    """

    start: datetime
    end: datetime
    usage: Decimal
    balance_at_start: Decimal
    balance_at_end: Decimal
    overage_at_end: Decimal


def windowed_history(segments: Sequence[Segment], edges: Sequence[datetime]) -> list[HistoryWindow]:
    """One row per [edges[i], edges[i+1]) covered by the segments; every edge inside must be a segment edge."""
    out: list[HistoryWindow] = []
    starts = {s.start: k for k, s in enumerate(segments)}
    for lo, hi in itertools.pairwise(edges):
        k = starts.get(lo)
        if k is None:
            raise EngineInputError("history edge is not a segment boundary", edge=lo.isoformat())
        first = segments[k]
        usage = ZERO
        last = first
        while k < len(segments) and segments[k].start < hi:
            last = segments[k]
            usage += last.usage
            k += 1
        if last.end != hi:
            raise EngineInputError("history edge is not a segment boundary", edge=hi.isoformat())
        out.append(HistoryWindow(lo, hi, usage, first.balance_at_start, last.balance_at_end, last.overage_at_end))
    return out


def burndown(segments: Sequence[Segment], closed_by: Instant | None) -> list[Segment]:
    """OpenMeter's burn-down segments over the engine's consecutive `segments` (README.md, "Burn-down").

    A segment starts at the first window and at every instant where a grant activates, expires, is voided
    or recurs (even when it was full) or the usage resets; windows between two such instants are merged.
    A segment's start balances are taken after the events at its start but before the carried overage is
    paid back; the payback is burnt inside the segment (its grant usages can sum to more than its usage).
    A reset `r` after the first window's start adds a zero-length segment [r, r]: start balances after the
    rollover, grant usages the preserved overage burnt at the reset, end balances and overage after it.
    `closed_by` (the events at the last window's end) adds a final zero-length segment when it is a reset
    or a recurrence, so the last segment shows the state after everything at the end.
    """
    out: list[Segment] = []
    for seg in segments:
        inst = seg.opened_by
        if inst is not None and inst.reset and out:
            out.append(_instant_segment(inst, seg.balances_at_start, seg.overage_at_start, seg.period_start))
            out.append(seg)  # the payback is shown in the zero-length segment above
        elif not out or (inst is not None and inst.phase):
            out.append(_opened(seg) if inst is not None else seg)
        else:
            out[-1] = _joined(out[-1], seg)
    if closed_by is not None and out and (closed_by.reset or closed_by.recurred):
        last = out[-1]
        after = dict(closed_by.balances)
        for u in closed_by.payback:
            after[u.grant_id] -= u.usage
        overage = closed_by.overage - sum((u.usage for u in closed_by.payback), ZERO)
        period_start = closed_by.at if closed_by.reset else last.period_start
        out.append(_instant_segment(closed_by, after, overage, period_start))
    return out


def _instant_segment(
    inst: Instant, balances_after: Mapping[str, Decimal], overage_after: Decimal, period_start: datetime
) -> Segment:
    """The zero-length segment [t, t] of the events at one instant: the payback of the carried overage."""
    return Segment(
        inst.at,
        inst.at,
        ZERO,
        inst.overage,
        overage_after,
        ZERO,
        inst.balances,
        dict(balances_after),
        inst.payback,
        period_start,
        inst.reset,
        inst,
    )


def _opened(seg: Segment) -> Segment:
    """`seg` shown from before the payback of the overage carried into its start."""
    inst = seg.opened_by
    assert inst is not None
    return replace(
        seg,
        overage_at_start=inst.overage,
        balances_at_start=inst.balances,
        grant_usages=_summed(inst.payback, seg.grant_usages),
    )


def _joined(prev: Segment, seg: Segment) -> Segment:
    """Two consecutive windows with no event between them, as one segment."""
    return replace(
        prev,
        end=seg.end,
        usage=prev.usage + seg.usage,
        overage_at_end=seg.overage_at_end,
        overage_created=prev.overage_created + seg.overage_created,
        balances_at_end=seg.balances_at_end,
        grant_usages=_summed(prev.grant_usages, seg.grant_usages),
    )


def _summed(*usages: Sequence[GrantUsage]) -> tuple[GrantUsage, ...]:
    total: dict[str, Decimal] = {}
    for group in usages:
        for u in group:
            total[u.grant_id] = total.get(u.grant_id, ZERO) + u.usage
    return tuple(GrantUsage(k, v) for k, v in total.items())
