"""engine.period_containing (period arithmetic, no walk) equals the period the engine's walk reports.

Also pins how it relates to engine.current_period (the period read off a snapshot): the two agree on every
usable snapshot and part ways on a stale one, so neither can silently replace the other.
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
    Snapshot,
    current_period,
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
def test_current_period_of_a_usable_snapshot_equals_period_containing(
    case: tuple[EntitlementTerms, list[ManualReset], datetime],
) -> None:
    """On every snapshot the engine hands out (initial, after each reset, final) with the inputs it was
    taken from, reading the period off the snapshot gives period_containing's [start, end)."""
    terms, resets, at = case
    snap = initial_snapshot(terms, (), resets)
    bounds = plan_windows(snap, (), resets, terms, at)
    result = run(snap, (), resets, terms, bounds, [Decimal(0)] * (len(bounds) - 1))
    for s in (snap, *result.snapshots, result.final):
        assert snapshot_is_usable(s, terms, (), resets)
        assert current_period(s, terms, resets) == period_containing(terms, resets, s.at)[:2]


def day(n: int) -> datetime:
    return T0 + timedelta(days=n)


def _monthly_snapshot_at(days: int) -> tuple[EntitlementTerms, Snapshot]:
    terms = EntitlementTerms(usage_period=Recurrence(Period.parse("MONTH"), T0), measure_usage_from=T0)
    snap = initial_snapshot(terms, (), [])
    bounds = plan_windows(snap, (), [], terms, day(days))
    return terms, run(snap, (), [], terms, bounds, [Decimal(0)] * (len(bounds) - 1)).final


@pytest.mark.parametrize(
    ("resets", "from_snapshot", "from_arithmetic"),
    [
        # A reset backdated to before the snapshot: current_period keeps the snapshot's start and cadence
        # (the stale month), period_containing starts the period at the reset.
        ([ManualReset(day(9))], (day(0), day(31)), (day(9), day(40))),
        ([ManualReset(day(9), retain_anchor=True)], (day(0), day(31)), (day(9), day(31))),
        # A reset backdated to exactly the snapshot instant: only `t > snapshot.at` counts for the end.
        ([ManualReset(day(20))], (day(0), day(31)), (day(20), day(51))),
    ],
)
def test_current_period_of_a_stale_snapshot_differs_from_period_containing(
    resets: list[ManualReset], from_snapshot: tuple[datetime, datetime], from_arithmetic: tuple[datetime, datetime]
) -> None:
    """current_period takes start and cadence from the snapshot and only the end from the resets given, and
    does not check the snapshot is usable; period_containing recomputes everything from the inputs. This
    pins the divergence as it is (not as it should be): merging the two must decide it first."""
    terms, snap = _monthly_snapshot_at(20)
    assert not snapshot_is_usable(snap, terms, (), resets)
    assert current_period(snap, terms, resets) == from_snapshot
    assert period_containing(terms, resets, snap.at)[:2] == from_arithmetic


def test_current_period_of_a_snapshot_under_changed_terms_keeps_the_old_cadence() -> None:
    """Terms changed after the snapshot: current_period still uses the snapshot's cadence and start, and
    never checks measure_usage_from; period_containing uses the new terms (and refuses an instant before
    their measure_usage_from)."""
    _, snap = _monthly_snapshot_at(20)
    weekly = EntitlementTerms(usage_period=Recurrence(Period.parse("P1W"), T0), measure_usage_from=T0)
    assert current_period(snap, weekly, []) == (day(0), day(31))
    assert period_containing(weekly, [], snap.at)[:2] == (day(14), day(21))
    later = EntitlementTerms(usage_period=Recurrence(Period.parse("MONTH"), T0), measure_usage_from=day(25))
    assert current_period(snap, later, []) == (day(0), day(31))
    with pytest.raises(EngineInputError):
        period_containing(later, [], snap.at)
