"""Group the engine's burn-down segments into display windows (the history endpoint). Pure.

The shell passes the display window edges to `plan_windows` as `extra`, so every edge is a segment
boundary and each display window is an exact union of segments.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from entitlements.engine.model import ZERO, Segment
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
