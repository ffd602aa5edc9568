"""Balance-threshold selection, as tables (OpenMeter's rules in exact decimals) and properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from entitlements.domain import Expiration, ExpirationDuration, Grant, UsagePeriod
from entitlements.notifications.thresholds import Reading, Selection, Threshold, ThresholdType, crossed, due, select
from entitlements.notifications.watcher import next_change

U = ThresholdType.USAGE_VALUE
P = ThresholdType.USAGE_PERCENTAGE
B = ThresholdType.BALANCE_VALUE


def reading(usage: str, total: str = "100") -> Reading:
    u, t = Decimal(usage), Decimal(total)
    return Reading(balance=max(t - u, Decimal(0)), usage=u, overage=max(u - t, Decimal(0)), total_available=t)


@pytest.mark.parametrize(
    ("threshold", "usage", "expected"),
    [
        (Threshold(U, Decimal(50)), "50", False),  # usage must exceed the value
        (Threshold(U, Decimal(50)), "50.000000001", True),
        (Threshold(ThresholdType.NUMBER, Decimal(50)), "51", True),  # deprecated alias
        (Threshold(P, Decimal(80)), "80", False),
        (Threshold(P, Decimal(80)), "80.1", True),
        (Threshold(ThresholdType.PERCENT, Decimal(80)), "81", True),
        (Threshold(P, Decimal(150)), "151", True),  # over 100% allowed
        (Threshold(B, Decimal(10)), "90", False),  # balance 10 is not below 10
        (Threshold(B, Decimal(10)), "90.5", True),
        (Threshold(B, Decimal(0)), "100", True),  # for 0: at or below
        (Threshold(B, Decimal(0)), "99.99", False),
    ],
)
def test_crossed(threshold: Threshold, usage: str, expected: bool) -> None:
    assert crossed(threshold, reading(usage)) is expected


def test_nothing_is_crossed_while_nothing_is_granted() -> None:
    r = Reading(balance=Decimal(0), usage=Decimal(500), overage=Decimal(500), total_available=Decimal(0))
    assert select([Threshold(U, Decimal(1)), Threshold(B, Decimal(0)), Threshold(P, Decimal(1))], r) == Selection()


def test_selects_highest_usage_and_lowest_balance() -> None:
    ts = [
        Threshold(P, Decimal(50)),
        Threshold(U, Decimal(70)),
        Threshold(P, Decimal(90)),
        Threshold(B, Decimal(40)),
        Threshold(B, Decimal(20)),
        Threshold(B, Decimal(5)),
    ]
    got = select(ts, reading("85"))  # 85% used, balance 15
    assert got == Selection(usage=Threshold(U, Decimal(70)), balance=Threshold(B, Decimal(20)))


def test_due_only_when_the_selection_changes() -> None:
    sel = Selection(usage=Threshold(U, Decimal(70)), balance=None)
    assert due(sel, {}) == [Threshold(U, Decimal(70))]
    assert due(sel, {"usage": Threshold(U, Decimal(70))}) == []
    assert due(sel, {"usage": Threshold(U, Decimal(50))}) == [Threshold(U, Decimal(70))]
    assert due(Selection(), {"usage": Threshold(U, Decimal(70))}) == []


amounts = st.decimals(min_value=0, max_value=1000, places=2, allow_nan=False, allow_infinity=False)


@given(st.lists(amounts, min_size=1, max_size=40), st.lists(st.integers(1, 200), min_size=1, max_size=6, unique=True))
def test_rising_usage_fires_each_threshold_at_most_once(increments: list[Decimal], percents: list[int]) -> None:
    """However usage hovers or jumps within a period, each threshold produces at most one event."""
    ts = [Threshold(P, Decimal(p)) for p in percents]
    last: dict[str, Threshold] = {}
    fired: list[Threshold] = []
    usage = Decimal(0)
    for inc in increments:
        usage += inc
        for t in due(select(ts, reading(str(usage), "1000")), last):
            fired.append(t)
            last[t.type.kind] = t
    assert len(fired) == len(set(fired))
    crossed_now = [t for t in ts if crossed(t, reading(str(usage), "1000"))]
    if crossed_now:  # the highest crossed threshold has always been announced by the end
        assert max(crossed_now, key=lambda t: t.value) in fired


T = datetime(2026, 1, 1, tzinfo=UTC)


def grant(effective: datetime, expires: datetime, *, recurring: bool = False, voided: datetime | None = None) -> Grant:
    return Grant(
        id="g",
        namespace="ns",
        entitlement_id="e",
        amount=Decimal(10),
        priority=1,
        effective_at=effective,
        expiration=Expiration(ExpirationDuration.DAY, 1),
        expires_at=expires,
        created_at=effective,
        updated_at=effective,
        recurrence=UsagePeriod("DAY", effective) if recurring else None,
        voided_at=voided,
    )


def test_next_change_is_the_first_instant_the_value_moves_by_itself() -> None:
    now = T + timedelta(hours=5)
    period_end = T + timedelta(days=31)
    assert next_change([], period_end, now) == period_end
    assert next_change([grant(T, T + timedelta(hours=7))], period_end, now) == T + timedelta(hours=7)
    assert next_change([grant(T + timedelta(hours=6), T + timedelta(days=9))], period_end, now) == T + timedelta(
        hours=6
    )
    assert next_change([grant(T, T + timedelta(days=9), recurring=True)], period_end, now) == T + timedelta(days=1)
    voided = grant(T, T + timedelta(days=9), voided=T + timedelta(hours=1))
    assert next_change([voided], period_end, now) == period_end
    assert next_change([], None, now) is None
