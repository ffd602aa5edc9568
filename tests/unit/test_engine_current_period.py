"""engine.period_containing (period arithmetic, no walk) equals the period the engine's walk reports.

It is the engine's one current-period computation: the shell's reads use it, and the walk agrees with it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entitlements.engine import (
    EngineInputError,
    EntitlementTerms,
    ManualReset,
    Period,
    Recurrence,
    initial_snapshot,
    period_containing,
    plan_windows,
    run,
    snapshot_is_usable,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)
H = timedelta(hours=1)
HORIZON = 24 * 120


def hour(n: int) -> datetime:
    return T0 + n * H


def walked(terms: EntitlementTerms, resets: list[ManualReset], at: datetime) -> tuple[datetime, datetime, datetime]:
    """The reference: run the engine from measure_usage_from to `at` with zero usage (the old listing code)."""
    snap = initial_snapshot(terms, (), resets)
    bounds = plan_windows(snap, (), resets, terms, at)
    result = run(snap, (), resets, terms, bounds, [Decimal(0)] * (len(bounds) - 1))
    return result.period_start, result.period_end, result.final.period.anchor


@st.composite
def cases(draw: st.DrawFn) -> tuple[EntitlementTerms, list[ManualReset], datetime]:
    start = draw(st.integers(0, 72))
    terms = EntitlementTerms(
        usage_period=Recurrence(
            Period.parse(draw(st.sampled_from(["P1D", "P1W", "P1M", "PT36H", "P10D", "P1M15D"]))),
            hour(draw(st.integers(-2000, 2000))),
        ),
        measure_usage_from=hour(start),
        preserve_overage_at_reset=draw(st.booleans()),
    )
    # Resets before, at and after measure_usage_from, several sharing an instant, some after `at`.
    instants = st.integers(start - 24, HORIZON) | st.just(start)
    resets = draw(
        st.lists(
            st.builds(
                ManualReset,
                effective_at=instants.map(hour),
                retain_anchor=st.booleans(),
                preserve_overage=st.none() | st.booleans(),
            ),
            max_size=5,
        )
    )
    at_hour = draw(
        st.integers(start, HORIZON) | st.sampled_from([int((r.effective_at - T0) / H) for r in resets] or [start])
    )
    return terms, resets, hour(max(at_hour, start))


@settings(max_examples=400, deadline=None)
@given(cases())
def test_period_arithmetic_equals_the_engine_walk(case: tuple[EntitlementTerms, list[ManualReset], datetime]) -> None:
    terms, resets, at = case
    start, end, cadence = period_containing(terms, resets, at)
    assert (start, end, cadence.anchor) == walked(terms, resets, at)
    assert start <= at < end


@pytest.mark.parametrize(
    ("resets", "at", "expected"),
    [
        # No reset: the cadence's month.
        ([], hour(24 * 40), (datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC))),
        # A reset that moves the anchor: periods run from it.
        (
            [ManualReset(datetime(2024, 1, 10, tzinfo=UTC), retain_anchor=False)],
            datetime(2024, 2, 15, tzinfo=UTC),
            (datetime(2024, 2, 10, tzinfo=UTC), datetime(2024, 3, 10, tzinfo=UTC)),
        ),
        # A reset that keeps the anchor: its period ends at the next original boundary.
        (
            [ManualReset(datetime(2024, 1, 10, tzinfo=UTC), retain_anchor=True)],
            datetime(2024, 1, 15, tzinfo=UTC),
            (datetime(2024, 1, 10, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC)),
        ),
        # A later reset (known now) ends the current period early.
        (
            [ManualReset(datetime(2024, 1, 20, tzinfo=UTC), retain_anchor=True)],
            datetime(2024, 1, 15, tzinfo=UTC),
            (datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 20, tzinfo=UTC)),
        ),
    ],
)
def test_worked_periods(resets: list[ManualReset], at: datetime, expected: tuple[datetime, datetime]) -> None:
    terms = EntitlementTerms(usage_period=Recurrence(Period.parse("MONTH"), T0), measure_usage_from=T0)
    assert period_containing(terms, resets, at)[:2] == expected
    assert walked(terms, resets, at)[:2] == expected


def test_an_instant_before_measure_usage_from_is_refused() -> None:
    terms = EntitlementTerms(usage_period=Recurrence(Period.parse("MONTH"), T0), measure_usage_from=hour(5))
    with pytest.raises(EngineInputError):
        period_containing(terms, [], hour(4))


@settings(max_examples=200, deadline=None)
@given(cases())
def test_the_walk_reports_period_containing_at_every_snapshot(
    case: tuple[EntitlementTerms, list[ManualReset], datetime],
) -> None:
    """At every snapshot the engine hands out (initial, after each reset, final), the period start it holds
    is period_containing's, and the walk's final period is period_containing's [start, end): one
    current-period computation."""
    terms, resets, at = case
    snap = initial_snapshot(terms, (), resets)
    bounds = plan_windows(snap, (), resets, terms, at)
    result = run(snap, (), resets, terms, bounds, [Decimal(0)] * (len(bounds) - 1))
    for s in (snap, *result.snapshots, result.final):
        assert snapshot_is_usable(s, terms, (), resets)
        assert s.period_start == period_containing(terms, resets, s.at)[0]
    assert (result.period_start, result.period_end) == period_containing(terms, resets, result.at)[:2]
