"""Where time splits: the instants at which the engine's state may change, and the inputs' fingerprint.

Pure. The planner walks forward from a snapshot so that automatic period boundaries follow the cadence
as manual resets move its anchor.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from entitlements.engine.model import EntitlementTerms, Grant, ManualReset, Snapshot
from entitlements.engine.period import EngineInputError, Recurrence, require_utc


@dataclass(frozen=True, slots=True)
class ResetAt:
    """The manual resets that fall on one instant, merged: any that moves the anchor moves it, and any
    that preserves overage preserves it (so the order resets are given in never matters)."""

    at: datetime
    move_anchor: bool
    preserve_overage: bool | None


def all_grants(terms: EntitlementTerms, grants: Iterable[Grant]) -> list[Grant]:
    """The caller's grants plus the synthetic issueAfterReset grant; ids must be unique."""
    out = list(grants)
    issued = terms.issue_grant()
    if issued is not None:
        out.append(issued)
    ids = [g.id for g in out]
    if len(set(ids)) != len(ids):
        raise EngineInputError("grant ids must be unique")
    return out


def merged_resets(terms: EntitlementTerms, resets: Iterable[ManualReset]) -> dict[datetime, ResetAt]:
    """Manual resets at or after measure_usage_from, one entry per instant (earlier ones are ignored)."""
    out: dict[datetime, ResetAt] = {}
    for r in resets:
        if r.effective_at < terms.measure_usage_from:
            continue
        prev = out.get(r.effective_at)
        move = not r.retain_anchor
        keep = r.preserve_overage
        if prev is not None:
            move = move or prev.move_anchor
            if prev.preserve_overage is not None:
                keep = bool(keep) or prev.preserve_overage
        out[r.effective_at] = ResetAt(r.effective_at, move, keep)
    return out


def moved_cadence(cadence: Recurrence, reset: ResetAt) -> Recurrence:
    """The period cadence after a manual reset: re-anchored at the reset unless it retains the anchor."""
    return Recurrence(cadence.interval, reset.at) if reset.move_anchor else cadence


def reset_instants(
    start: datetime, cadence: Recurrence, resets: dict[datetime, ResetAt], end: datetime
) -> list[datetime]:
    """Every reset instant r with start < r < end: automatic boundaries of the (moving) cadence, and manual."""
    manual = sorted(t for t in resets if start < t < end)
    out: list[datetime] = []
    t, i = start, 0
    while True:
        auto = cadence.after(t)
        nxt = min(auto, manual[i]) if i < len(manual) else auto
        if nxt >= end:
            return out
        out.append(nxt)
        if i < len(manual) and manual[i] == nxt:
            cadence = moved_cadence(cadence, resets[nxt])
            i += 1
        t = nxt


def period_containing(
    terms: EntitlementTerms, resets: Sequence[ManualReset], at: datetime
) -> tuple[datetime, datetime, Recurrence]:
    """[start, end) of the usage period containing `at` (>= measure_usage_from) and the cadence then.

    Period arithmetic only, no walk: usage and grants never move a period boundary. The cadence at `at` is
    the entitlement's, re-anchored by the last anchor-moving manual reset at or before `at`; the period
    starts at the later of that cadence's boundary at or before `at` and the last manual reset after
    measure_usage_from (a reset at measure_usage_from only moves the cadence, as in `initial_snapshot`);
    it ends at the earlier of the cadence's next boundary and the next manual reset. Equal to what `run`
    reports (`Result.period_start`, `period_end`, `final.period`), which the property tests check.
    """
    at = require_utc(at, "at")
    if at < terms.measure_usage_from:
        raise EngineInputError("the instant is before measure_usage_from", at=at.isoformat())
    merged = merged_resets(terms, resets)
    cadence = terms.usage_period
    last_manual: datetime | None = None
    for t in sorted(u for u in merged if u <= at):
        cadence = moved_cadence(cadence, merged[t])
        if t > terms.measure_usage_from:
            last_manual = t
    start = cadence.at_or_before(at)
    if last_manual is not None and last_manual > start:
        start = last_manual
    end = min([cadence.after(at), *(t for t in merged if t > at)])
    return start, end, cadence


def grant_instants(g: Grant, start: datetime, end: datetime) -> list[datetime]:
    """Instants t with start < t < end where grant g activates, recurs, expires or is voided."""
    out = [t for t in (g.effective_at, g.end) if t is not None and start < t < end]
    if g.recurrence is not None:
        lo = max(start, g.effective_at)
        hi = end if g.end is None else min(end, g.end)
        if lo < hi:
            out.extend(g.recurrence.between(lo, hi))
    return out


def plan_windows(
    snapshot: Snapshot,
    grants: Sequence[Grant],
    resets: Sequence[ManualReset],
    terms: EntitlementTerms,
    target: datetime,
    extra: Iterable[datetime] = (),
) -> list[datetime]:
    """The boundaries b0 = snapshot.at < b1 < ... < bn = target of the windows whose usage `run` needs.

    Every instant in (snapshot.at, target) where the state may change is a boundary: grant activation,
    expiry, void and recurrence, automatic period boundaries and manual resets. `extra` instants inside
    (snapshot.at, target) are added too (e.g. history window edges); splitting a window never changes a
    result. The shell fetches usage for [b_i, b_i+1) (one value per window) and calls `run`.
    With target == snapshot.at the plan is [snapshot.at] (no window).
    """
    target = require_utc(target, "target")
    start = snapshot.at
    if target < start:
        raise EngineInputError("target is before the snapshot", target=target.isoformat(), at=start.isoformat())
    points = {start, target}
    points.update(reset_instants(start, snapshot.period, merged_resets(terms, resets), target))
    for g in all_grants(terms, grants):
        points.update(grant_instants(g, start, target))
    for t in extra:
        u = require_utc(t, "extra")
        if start < u < target:
            points.add(u)
    return sorted(points)


def _g(g: Grant, at: datetime) -> str:
    voided = g.voided_at.isoformat() if g.voided_at is not None and g.voided_at <= at else "-"
    rec = "-" if g.recurrence is None else f"{g.recurrence.interval}@{g.recurrence.anchor.isoformat()}"
    exp = "-" if g.expires_at is None else g.expires_at.isoformat()
    return "|".join(
        (
            g.id,
            str(g.amount),
            str(g.priority),
            g.effective_at.isoformat(),
            g.created_at.isoformat(),
            exp,
            voided,
            str(g.min_rollover),
            str(g.max_rollover),
            rec,
        )
    )


def inputs_digest(terms: EntitlementTerms, grants: Sequence[Grant], resets: Sequence[ManualReset], at: datetime) -> str:
    """A fingerprint of every input that can shape the state at `at`: the terms, grants effective at or
    before `at` (a void counts only if at or before `at`) and resets at or before `at`.

    A snapshot taken at `at` stays usable exactly while this digest is unchanged: a backdated grant, void
    or reset changes it. Late usage events are not inputs here; the shell checks them (UsageReader).
    """
    at = require_utc(at, "at")
    parts = [
        f"period={terms.usage_period.interval}@{terms.usage_period.anchor.isoformat()}",
        f"from={terms.measure_usage_from.isoformat()}",
        f"soft={terms.is_soft_limit}",
        f"issue={terms.issue_after_reset}/{terms.issue_after_reset_priority}",
        f"preserve={terms.preserve_overage_at_reset}",
    ]
    parts += sorted("g:" + _g(g, at) for g in all_grants(terms, grants) if g.effective_at <= at)
    parts += sorted(
        f"r:{r.at.isoformat()}|{r.move_anchor}|{r.preserve_overage}"
        for r in merged_resets(terms, resets).values()
        if r.at <= at
    )
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def snapshot_is_usable(
    snapshot: Snapshot, terms: EntitlementTerms, grants: Sequence[Grant], resets: Sequence[ManualReset]
) -> bool:
    """True when no input that shapes the state at snapshot.at changed since the snapshot was taken."""
    return snapshot.inputs_digest == inputs_digest(terms, grants, resets, snapshot.at)
