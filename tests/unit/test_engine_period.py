"""Calendar math of usage periods, recurrences and expirations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from entitlements.engine import EngineInputError, Period, Recurrence, add_months


def utc(year: int, month: int, d: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, d, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("DAY", Period(days=1)),
        ("WEEK", Period(days=7)),
        ("MONTH", Period(months=1)),
        ("YEAR", Period(months=12)),
        ("P1M", Period(months=1)),
        ("P1Y2M", Period(months=14)),
        ("P2W", Period(days=14)),
        ("PT6H", Period(seconds=6 * 3600)),
        ("P1DT1H30M5S", Period(days=1, seconds=3600 + 1800 + 5)),
    ],
)
def test_parse_interval(text: str, expected: Period) -> None:
    assert Period.parse(text) == expected
    assert Period.parse(str(expected)) == expected


@pytest.mark.parametrize("text", ["", "P", "PT", "P0D", "P1.5M", "month-ish", "-P1D", "PT1H2D"])
def test_parse_refuses_bad_intervals(text: str) -> None:
    with pytest.raises(EngineInputError):
        Period.parse(text)


@pytest.mark.parametrize(
    ("anchor", "n", "expected"),
    [
        (utc(2024, 1, 31), 1, utc(2024, 2, 29)),  # leap year clamp
        (utc(2023, 1, 31), 1, utc(2023, 2, 28)),
        (utc(2024, 1, 31), 2, utc(2024, 3, 31)),  # no drift: from the anchor, not from Feb 29
        (utc(2024, 1, 31), 3, utc(2024, 4, 30)),
        (utc(2024, 1, 31), -2, utc(2023, 11, 30)),
        (utc(2024, 1, 31, 12, 30), 13, utc(2025, 2, 28, 12, 30)),
    ],
)
def test_month_end_anchor_clamps_without_drift(anchor: datetime, n: int, expected: datetime) -> None:
    assert Recurrence(Period.parse("MONTH"), anchor).boundary(n) == expected


def test_yearly_feb_29_anchor() -> None:
    r = Recurrence(Period.parse("YEAR"), utc(2024, 2, 29))
    assert [r.boundary(n) for n in range(5)] == [
        utc(2024, 2, 29),
        utc(2025, 2, 28),
        utc(2026, 2, 28),
        utc(2027, 2, 28),
        utc(2028, 2, 29),
    ]


def test_non_utc_anchor_is_the_same_instant_and_naive_is_refused() -> None:
    cet = timezone(timedelta(hours=1))
    r = Recurrence(Period.parse("DAY"), datetime(2024, 3, 31, 1, 0, tzinfo=cet))
    assert r.anchor == utc(2024, 3, 31, 0, 0)
    assert r.boundary(1) == utc(2024, 4, 1)  # UTC: a DST change in some zone does not matter
    with pytest.raises(EngineInputError):
        Recurrence(Period.parse("DAY"), datetime(2024, 1, 1))


def test_expiration_periods() -> None:
    start = utc(2024, 1, 31, 10)
    assert Period.of_expiration("HOUR", 5).times(start, 1) == utc(2024, 1, 31, 15)
    assert Period.of_expiration("MONTH", 1).times(start, 1) == utc(2024, 2, 29, 10)
    assert Period.of_expiration("YEAR", 1).times(start, 1) == utc(2025, 1, 31, 10)
    with pytest.raises(EngineInputError):
        Period.of_expiration("DAY", 0)


def test_between_and_after() -> None:
    r = Recurrence(Period.parse("P1W"), utc(2024, 1, 1))
    assert r.between(utc(2024, 1, 1), utc(2024, 1, 22)) == [utc(2024, 1, 8), utc(2024, 1, 15)]
    assert r.after(utc(2024, 1, 8)) == utc(2024, 1, 15)
    assert r.at_or_before(utc(2024, 1, 8)) == utc(2024, 1, 8)


intervals = st.sampled_from(["PT1H", "PT7H", "P1D", "P1W", "P1M", "P3M", "P1Y", "P1M15D", "P2Y"])
instants = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC))


@given(intervals, instants, instants)
def test_at_or_before_brackets_every_instant(interval: str, anchor: datetime, t: datetime) -> None:
    r = Recurrence(Period.parse(interval), anchor)
    n = r.index_at_or_before(t)
    assert r.boundary(n) <= t < r.boundary(n + 1)


@given(instants, st.integers(-2400, 2400))
def test_add_months_keeps_time_and_clamps(t: datetime, months: int) -> None:
    u = add_months(t, months)
    assert (u.year * 12 + u.month) - (t.year * 12 + t.month) == months
    assert u.time() == t.time()
    assert u.day == t.day or (u.day < t.day and (u + timedelta(days=1)).day == 1)
