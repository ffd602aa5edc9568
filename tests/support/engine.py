"""Drives the pure balance engine the way the shell does, with usage from an in-memory event list."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from entitlements.engine import (
    EntitlementTerms,
    Grant,
    ManualReset,
    Period,
    Recurrence,
    Result,
    Snapshot,
    initial_snapshot,
    plan_windows,
    run,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)
Event = tuple[datetime, Decimal]


def day(n: float) -> datetime:
    """T0 plus n days (Jan 1 2024 is day 0)."""
    return T0 + timedelta(days=n)


def monthly(anchor: datetime = T0, **kw: object) -> EntitlementTerms:
    return EntitlementTerms(usage_period=Recurrence(Period.parse("MONTH"), anchor), measure_usage_from=T0, **kw)  # type: ignore[arg-type]


def grant(gid: str, amount: int | str, **kw: object) -> Grant:
    kw.setdefault("effective_at", T0)
    kw.setdefault("created_at", kw["effective_at"])
    return Grant(id=gid, amount=Decimal(amount), **kw)  # type: ignore[arg-type]


def window_usage(events: Iterable[Event], bounds: Sequence[datetime]) -> list[Decimal]:
    """What UsageReader.usage_windows answers: the sum of values with bounds[i] <= time < bounds[i+1]."""
    out = [Decimal(0)] * (len(bounds) - 1)
    for t, v in events:
        for i in range(len(bounds) - 1):
            if bounds[i] <= t < bounds[i + 1]:
                out[i] += v
                break
    return out


def evaluate(
    terms: EntitlementTerms,
    grants: Sequence[Grant],
    events: Iterable[Event],
    target: datetime,
    resets: Sequence[ManualReset] = (),
    snapshot: Snapshot | None = None,
    extra: Iterable[datetime] = (),
) -> Result:
    snap = snapshot if snapshot is not None else initial_snapshot(terms, grants, resets)
    bounds = plan_windows(snap, grants, resets, terms, target, extra)
    return run(snap, grants, resets, terms, bounds, window_usage(list(events), bounds))
