"""The balance engine's values: grants, resets, entitlement terms, snapshots and results.

Everything here is immutable and pure. Amounts are Decimal (never float); instants are aware UTC
datetimes; windows are half-open [start, end). The semantics are written down in README.md beside
this file. The shell's loop is:

    snap = usable snapshot from the database, or initial_snapshot(terms, grants, resets)
    bounds = plan_windows(snap, grants, resets, terms, target)          # engine
    usage = await usage_reader.usage_windows(..., bounds)               # shell, one round trip
    result = run(snap, grants, resets, terms, bounds, usage)            # engine
    persist result.snapshots (period starts), answer from result
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from entitlements.engine.period import EngineInputError, Period, Recurrence, require_utc

ZERO = Decimal(0)

#: Id of the synthetic grant that models issueAfterReset (see EntitlementTerms.issue_grant).
ISSUE_AFTER_RESET_GRANT_ID = "__issue_after_reset__"


def _dec(v: Decimal | int | str, name: str) -> Decimal:
    if isinstance(v, float):
        raise EngineInputError("amounts are Decimal, never float", field=name)
    d = Decimal(v)
    if not d.is_finite():
        raise EngineInputError("amount must be finite", field=name)
    return d


@dataclass(frozen=True, slots=True)
class Grant:
    """A grant of `amount` credits, usable from effective_at until the first of expires_at and voided_at.

    priority: lower burns first (OpenMeter: 1 is highest). expires_at: the shell computes it from the
    API's expiration {duration, count} with `Period.of_expiration(unit, count).times(effective_at, 1)`.
    min_rollover / max_rollover: at a reset the balance becomes min(max_rollover, max(min_rollover, b)).
    recurrence: at each recurrence instant strictly inside the grant's life the balance is set back to
    `amount` (OpenMeter: recurrence.anchor defaults to effectiveAt).
    """

    id: str
    amount: Decimal
    effective_at: datetime
    created_at: datetime
    priority: int = 1
    expires_at: datetime | None = None
    voided_at: datetime | None = None
    min_rollover: Decimal = ZERO
    max_rollover: Decimal = ZERO
    recurrence: Recurrence | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "amount", _dec(self.amount, "amount"))
        object.__setattr__(self, "min_rollover", _dec(self.min_rollover, "min_rollover"))
        object.__setattr__(self, "max_rollover", _dec(self.max_rollover, "max_rollover"))
        object.__setattr__(self, "effective_at", require_utc(self.effective_at, "effective_at"))
        object.__setattr__(self, "created_at", require_utc(self.created_at, "created_at"))
        if self.expires_at is not None:
            object.__setattr__(self, "expires_at", require_utc(self.expires_at, "expires_at"))
        if self.voided_at is not None:
            object.__setattr__(self, "voided_at", require_utc(self.voided_at, "voided_at"))
        if self.amount < 0:
            raise EngineInputError("grant amount must not be negative", grant_id=self.id)

    @property
    def end(self) -> datetime | None:
        """The first instant at which the grant is no longer usable (expiry or void), or None."""
        ends = [t for t in (self.expires_at, self.voided_at) if t is not None]
        return min(ends) if ends else None

    def active_at(self, t: datetime) -> bool:
        """Usable at instant t: effective_at <= t < end."""
        end = self.end
        return self.effective_at <= t and (end is None or t < end)

    def rollover(self, balance: Decimal) -> Decimal:
        """Balance right after a reset: min(max_rollover, max(min_rollover, balance))."""
        return min(self.max_rollover, max(self.min_rollover, balance))


def burn_order_key(g: Grant) -> tuple[int, int, datetime, datetime, str]:
    """Burn order: lower priority first, then earlier expiry (no expiry last), then earlier creation, then id."""
    exp = g.expires_at
    return (g.priority, 1 if exp is None else 0, exp if exp is not None else g.created_at, g.created_at, g.id)


@dataclass(frozen=True, slots=True)
class ManualReset:
    """A reset requested through the API at effective_at.

    retain_anchor: False starts a new period cadence at effective_at (the anchor moves there); True keeps
    the anchor, so the period begun at effective_at ends at the next original boundary.
    preserve_overage: None means the entitlement's preserve_overage_at_reset.
    """

    effective_at: datetime
    retain_anchor: bool = False
    preserve_overage: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "effective_at", require_utc(self.effective_at, "effective_at"))


@dataclass(frozen=True, slots=True)
class EntitlementTerms:
    """The settings of one metered entitlement that the engine needs.

    usage_period: the period cadence at creation (the anchor may move later by manual resets).
    measure_usage_from: the instant where accounting starts (the shell resolves CURRENT_PERIOD_START / NOW).
    issue_after_reset: if set, a synthetic grant of this amount, effective at measure_usage_from, never
    expiring, min = max rollover = the amount, priority issue_after_reset_priority.
    """

    usage_period: Recurrence
    measure_usage_from: datetime
    is_soft_limit: bool = False
    issue_after_reset: Decimal | None = None
    issue_after_reset_priority: int = 1
    preserve_overage_at_reset: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "measure_usage_from", require_utc(self.measure_usage_from, "measure_usage_from"))
        if self.issue_after_reset is not None:
            object.__setattr__(self, "issue_after_reset", _dec(self.issue_after_reset, "issue_after_reset"))

    def issue_grant(self) -> Grant | None:
        """The synthetic grant that models issueAfterReset, or None."""
        if self.issue_after_reset is None:
            return None
        a = self.issue_after_reset
        return Grant(
            id=ISSUE_AFTER_RESET_GRANT_ID,
            amount=a,
            effective_at=self.measure_usage_from,
            created_at=self.measure_usage_from,
            priority=self.issue_after_reset_priority,
            min_rollover=a,
            max_rollover=a,
        )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The full engine state at instant `at`, after every event at instants <= at was applied.

    balances: the balance of each grant usable at `at` (grants not yet effective are absent).
    overage: usage not covered by any grant, carried inside the period.
    period_start / period: the current usage period's start and cadence (the anchor after manual resets).
    usage_in_period: usage in [max(period_start, measure_usage_from), at).
    burnt_in_period: everything burnt from grants since the current period started (usage and overage
    paybacks, from grants that may since have expired or been voided); totalAvailableGrantAmount is the
    balance plus this (OpenMeter's TotalGrantUsage + Balance).
    inputs_digest: fingerprint of every input that shaped this state (see `inputs_digest`); a snapshot
    whose digest differs from the current inputs' digest at the same instant must not be used.
    """

    at: datetime
    balances: Mapping[str, Decimal]
    overage: Decimal
    period_start: datetime
    period: Recurrence
    usage_in_period: Decimal
    burnt_in_period: Decimal
    inputs_digest: str

    @property
    def balance(self) -> Decimal:
        return sum(self.balances.values(), ZERO)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (Decimals and datetimes as strings), for the shell to persist."""
        return {
            "at": self.at.isoformat(),
            "balances": {k: str(v) for k, v in sorted(self.balances.items())},
            "overage": str(self.overage),
            "period_start": self.period_start.isoformat(),
            "period_interval": str(self.period.interval),
            "period_anchor": self.period.anchor.isoformat(),
            "usage_in_period": str(self.usage_in_period),
            "burnt_in_period": str(self.burnt_in_period),
            "inputs_digest": self.inputs_digest,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Snapshot:
        return cls(
            at=require_utc(datetime.fromisoformat(d["at"]), "at"),
            balances={k: Decimal(v) for k, v in d["balances"].items()},
            overage=Decimal(d["overage"]),
            period_start=require_utc(datetime.fromisoformat(d["period_start"]), "period_start"),
            period=Recurrence(Period.parse(d["period_interval"]), datetime.fromisoformat(d["period_anchor"])),
            usage_in_period=Decimal(d["usage_in_period"]),
            burnt_in_period=Decimal(d["burnt_in_period"]),
            inputs_digest=d["inputs_digest"],
        )


@dataclass(frozen=True, slots=True)
class GrantUsage:
    grant_id: str
    usage: Decimal


@dataclass(frozen=True, slots=True)
class Instant:
    """What happened at one instant of the walk (README.md, "One instant"), for the burn-down history.

    reset: a usage reset (manual or a period boundary). recurred: a grant recurred (even if it was full).
    phase: an event changed the set of usable grants or a balance: an activation, an expiry or void, a
    recurrence or a reset (OpenMeter starts a new burn-down segment there).
    balances / overage: the state after every event at `at` except the payback of the carried overage;
    payback: what that payback burnt from each grant.
    """

    at: datetime
    reset: bool
    recurred: bool
    phase: bool
    balances: Mapping[str, Decimal]
    overage: Decimal
    payback: tuple[GrantUsage, ...]


@dataclass(frozen=True, slots=True)
class Segment:
    """One window [start, end) of the burn-down (OpenMeter's GrantBurnDownHistorySegment).

    balances_at_start is the state after the events at `start` were applied; the window's usage is then
    burnt in burn order; balances_at_end is before the events at `end` (resets, expiries, ...).
    overage_created: the part of `usage` no grant covered. reset_at_start: a reset happened at `start`.
    opened_by: the events at `start` (None for a run's first window, which starts from a snapshot).
    """

    start: datetime
    end: datetime
    usage: Decimal
    overage_at_start: Decimal
    overage_at_end: Decimal
    overage_created: Decimal
    balances_at_start: Mapping[str, Decimal]
    balances_at_end: Mapping[str, Decimal]
    grant_usages: tuple[GrantUsage, ...]
    period_start: datetime
    reset_at_start: bool
    opened_by: Instant | None = None

    @property
    def balance_at_start(self) -> Decimal:
        return sum(self.balances_at_start.values(), ZERO)

    @property
    def balance_at_end(self) -> Decimal:
        return sum(self.balances_at_end.values(), ZERO)


@dataclass(frozen=True, slots=True)
class Result:
    """The entitlement's state at `at` (the last boundary given to `run`), and how it got there.

    balance: sum of grant balances. usage: usage in the current period so far. overage: carried overage.
    total_available_grant_amount: balance + everything burnt from grants in the current period (see Snapshot).
    has_access: is_soft_limit or balance > 0. period_start/period_end: the current usage period.
    segments: one per window given to `run`, in order. closed_by: the events at `at` (None if the run had
    no window). snapshots: the state at the start of every period
    that began inside the run (right after the reset), for the shell to persist. final: the state at `at`.
    ledger: the flows of the run, for audits and the conservation invariant.
    """

    at: datetime
    balances: Mapping[str, Decimal]
    balance: Decimal
    usage: Decimal
    overage: Decimal
    total_available_grant_amount: Decimal
    has_access: bool
    period_start: datetime
    period_end: datetime
    segments: tuple[Segment, ...]
    snapshots: tuple[Snapshot, ...]
    final: Snapshot
    ledger: Ledger
    closed_by: Instant | None = None


@dataclass(frozen=True, slots=True)
class Ledger:
    """Every flow of credits and usage during a run. Conservation (checked by the tests):

    (snapshot.balance - snapshot.overage) + activated + recurred + rolled_over - ended - usage
        + overage_forgiven == result.balance - result.overage
    activated: amounts of grants that became usable. recurred: top-ups to `amount` at recurrences (signed).
    rolled_over: balance changes at resets (signed). ended: balances lost at expiry or void.
    usage: all usage of the run. overage_forgiven: overage dropped at resets (preserveOverage false).
    negative_usage_ignored: windows whose net usage was negative count as zero; the magnitude lands here.
    """

    activated: Decimal = ZERO
    recurred: Decimal = ZERO
    rolled_over: Decimal = ZERO
    ended: Decimal = ZERO
    usage: Decimal = ZERO
    overage_forgiven: Decimal = ZERO
    negative_usage_ignored: Decimal = ZERO
