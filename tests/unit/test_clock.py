"""utc_from_storage: a datetime read back from ClickHouse or SQL becomes an aware UTC instant."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from common.clock import utc_from_storage


@pytest.fixture
def local_zone_not_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A process zone 5 hours off UTC, so reading a naive value as local time (`astimezone`) would show."""
    monkeypatch.setenv("TZ", "EST+05")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("local_zone_not_utc")
@pytest.mark.parametrize(
    ("stored", "instant"),
    [
        # naive: storage returns UTC columns without a zone, so the wall time is kept and marked UTC
        (datetime(2025, 1, 1, 12, 0, 0, 123000), datetime(2025, 1, 1, 12, 0, 0, 123000, tzinfo=UTC)),
        # aware in another zone: the same instant, converted (not relabelled)
        (
            datetime(2025, 1, 1, 13, 30, tzinfo=timezone(timedelta(hours=1, minutes=30))),
            datetime(2025, 1, 1, 12, 0, tzinfo=UTC),
        ),
        (datetime(2025, 1, 1, 0, 0, tzinfo=timezone(timedelta(hours=-5))), datetime(2025, 1, 1, 5, 0, tzinfo=UTC)),
        # aware UTC: unchanged
        (datetime(2025, 1, 1, 12, 0, tzinfo=UTC), datetime(2025, 1, 1, 12, 0, tzinfo=UTC)),
    ],
)
def test_stored_datetimes_become_aware_utc(stored: datetime, instant: datetime) -> None:
    got = utc_from_storage(stored)
    assert got == instant
    assert got.tzinfo is UTC
    assert (got.hour, got.minute, got.microsecond) == (instant.hour, instant.minute, instant.microsecond)


@pytest.mark.parametrize("value", ["2025-01-01 12:00:00", 1735732800, None])
def test_a_value_that_is_not_a_datetime_is_refused(value: object) -> None:
    with pytest.raises(TypeError, match="expected a datetime"):
        utc_from_storage(value)
