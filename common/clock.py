"""Time is a dependency: the shell asks a Clock, pure code receives instants as values.

Also the one place where a datetime read back from storage becomes an instant (`utc_from_storage`).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """An aware UTC instant."""
        ...


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def to_millis(t: datetime) -> int:
    """An aware instant as whole milliseconds since the epoch (floor), as stored in DateTime64(3) columns."""
    return (t - EPOCH) // _MS


def utc_from_storage(value: object) -> datetime:
    """A datetime read from ClickHouse or an SQL database, as an aware UTC instant.

    Storage hands back naive datetimes for columns that hold UTC (clickhouse-connect for
    `DateTime64(3, 'UTC')`, SQLite for every timestamp), so here naive means UTC; an aware value is
    converted. Only for values storage returns: an instant from a caller that is naive has no known zone
    and is refused instead (`FrozenClock`, the engine's `require_utc`, the state database on write).
    """
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FrozenClock:
    """A test clock: frozen at an instant, moved only forward and only on request.

    Like Stripe's test clocks, it lets a user replay months of usage, grants and resets in seconds.
    """

    def __init__(self, at: datetime) -> None:
        if at.tzinfo is None:
            raise ValueError("a frozen clock needs an aware datetime")
        self._now = at.astimezone(UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance_to(self, at: datetime) -> datetime:
        if at.tzinfo is None:
            raise ValueError("a frozen clock needs an aware datetime")
        with self._lock:
            target = at.astimezone(UTC)
            if target < self._now:
                raise ValueError(f"the test clock only moves forward: {target} is before {self._now}")
            self._now = target
            return self._now

    def advance_by(self, delta: timedelta) -> datetime:
        with self._lock:
            if delta < timedelta(0):
                raise ValueError("the test clock only moves forward")
            self._now += delta
            return self._now


def format_time(t: datetime) -> str:
    """RFC 3339 in UTC with milliseconds, the form Metergate writes everywhere."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"
