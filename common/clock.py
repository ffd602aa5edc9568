"""Time is a dependency: the shell asks a Clock, pure code receives instants as values."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """An aware UTC instant."""
        ...


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
