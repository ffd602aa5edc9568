"""Stored state -> the engine's values, and the period arithmetic the API shows. Pure: no I/O, no clock."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from entitlements import engine
from entitlements.domain import Entitlement, Expiration, Grant, NotMetered, Reset, UsagePeriod


def recurrence_of(period: UsagePeriod) -> engine.Recurrence:
    return engine.Recurrence(engine.Period.parse(period.interval), period.anchor)


def expires_at(effective_at: datetime, expiration: Expiration | None) -> datetime | None:
    if expiration is None:
        return None
    return engine.Period.of_expiration(expiration.duration.value, expiration.count).times(effective_at, 1)


def terms_of(e: Entitlement) -> engine.EntitlementTerms:
    if e.usage_period is None or e.measure_usage_from is None:
        raise NotMetered(e.id, "usage period")
    return engine.EntitlementTerms(
        usage_period=recurrence_of(e.usage_period),
        measure_usage_from=e.measure_usage_from,
        is_soft_limit=e.is_soft_limit,
        issue_after_reset=e.issue_after_reset,
        issue_after_reset_priority=e.issue_after_reset_priority,
        preserve_overage_at_reset=e.preserve_overage_at_reset,
    )


def engine_grant(g: Grant) -> engine.Grant:
    return engine.Grant(
        id=g.id,
        amount=g.amount,
        effective_at=g.effective_at,
        created_at=g.created_at,
        priority=g.priority,
        expires_at=g.expires_at,
        voided_at=g.voided_at,
        min_rollover=g.min_rollover_amount,
        max_rollover=g.max_rollover_amount,
        recurrence=None if g.recurrence is None else recurrence_of(g.recurrence),
    )


def engine_reset(r: Reset) -> engine.ManualReset:
    return engine.ManualReset(
        effective_at=r.effective_at, retain_anchor=r.retain_anchor, preserve_overage=r.preserve_overage
    )


@dataclass(frozen=True, slots=True)
class Inputs:
    """Everything the engine needs for one metered entitlement, as engine values."""

    terms: engine.EntitlementTerms
    grants: tuple[engine.Grant, ...]
    resets: tuple[engine.ManualReset, ...]

    @classmethod
    def of(cls, e: Entitlement, grants: Sequence[Grant], resets: Sequence[Reset]) -> Inputs:
        return cls(terms_of(e), tuple(engine_grant(g) for g in grants), tuple(engine_reset(r) for r in resets))


@dataclass(frozen=True, slots=True)
class PeriodView:
    """What GET entitlement shows of a metered entitlement's periods at an instant."""

    start: datetime
    end: datetime
    anchor: datetime
    last_reset: datetime


def period_at(inputs: Inputs, at: datetime) -> PeriodView:
    """The usage period containing `at`, the cadence's anchor then (moved by resets), and the last reset.

    Period arithmetic over the cadence and the manual resets (`engine.period_containing`): no walk over
    the history and no I/O, whatever the number of periods since measureUsageFrom.
    """
    terms = inputs.terms
    last_manual = max((r.effective_at for r in inputs.resets if r.effective_at <= at), default=None)
    if at < terms.measure_usage_from:
        cadence = terms.usage_period
        return PeriodView(cadence.at_or_before(at), cadence.after(at), cadence.anchor, terms.measure_usage_from)
    start, end, cadence = engine.period_containing(terms, inputs.resets, at)
    last_reset = last_manual if last_manual is not None else terms.measure_usage_from
    return PeriodView(start, end, cadence.anchor, last_reset)
