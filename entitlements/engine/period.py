"""Calendar arithmetic for usage periods, grant recurrences and grant expirations. Pure; UTC only.

Boundary n of a recurrence is computed from the anchor in one step (anchor + n x interval), never by
stepping from the previous boundary, so month-end anchors clamp without drift: anchor Jan 31 with a
monthly interval gives Feb 28 (Feb 29 in leap years), Mar 31, Apr 30, ... All instants are aware UTC,
so daylight saving time cannot shift a boundary.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from common.errors import InvalidInput


class EngineInputError(InvalidInput):
    """The engine was given inputs that break its contract (naive datetime, bad interval, bad windows)."""


class Interval(StrEnum):
    """The named intervals of OpenMeter's API (usagePeriod.interval, recurrence.interval)."""

    DAY = "DAY"
    WEEK = "WEEK"
    MONTH = "MONTH"
    YEAR = "YEAR"


class ExpirationUnit(StrEnum):
    """Units of a grant's expiration {duration, count}."""

    HOUR = "HOUR"
    DAY = "DAY"
    WEEK = "WEEK"
    MONTH = "MONTH"
    YEAR = "YEAR"


_ISO_DURATION = re.compile(
    r"^P(?!$)(?:(?P<y>\d+)Y)?(?:(?P<mo>\d+)M)?(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?"
    r"(?:T(?=\d)(?:(?P<h>\d+)H)?(?:(?P<mi>\d+)M)?(?:(?P<s>\d+)S)?)?$"
)


@dataclass(frozen=True, slots=True)
class Period:
    """A calendar duration: whole months plus a fixed part (days and seconds). Always positive.

    months = years x 12 + months; days = weeks x 7 + days; seconds = hours x 3600 + minutes x 60 + seconds.
    """

    months: int = 0
    days: int = 0
    seconds: int = 0

    def __post_init__(self) -> None:
        if min(self.months, self.days, self.seconds) < 0 or (self.months, self.days, self.seconds) == (0, 0, 0):
            raise EngineInputError("a period must be positive", period=str(self))

    @classmethod
    def parse(cls, text: str) -> Period:
        """A named interval (DAY, WEEK, MONTH, YEAR) or an ISO 8601 duration without fractions (P1M, PT1H)."""
        upper = text.strip().upper()
        named = {"DAY": cls(days=1), "WEEK": cls(days=7), "MONTH": cls(months=1), "YEAR": cls(months=12)}
        if upper in named:
            return named[upper]
        m = _ISO_DURATION.match(upper)
        if m is None:
            raise EngineInputError("not an interval (DAY, WEEK, MONTH, YEAR or ISO 8601 duration)", interval=text)
        g = {k: int(v) if v else 0 for k, v in m.groupdict().items()}
        return cls(
            months=g["y"] * 12 + g["mo"], days=g["w"] * 7 + g["d"], seconds=g["h"] * 3600 + g["mi"] * 60 + g["s"]
        )

    @classmethod
    def of_expiration(cls, unit: ExpirationUnit | str, count: int) -> Period:
        """A grant's expiration {duration, count} as a period."""
        if count <= 0:
            raise EngineInputError("expiration count must be positive", count=count)
        u = ExpirationUnit(unit)
        return {
            ExpirationUnit.HOUR: cls(seconds=3600 * count),
            ExpirationUnit.DAY: cls(days=count),
            ExpirationUnit.WEEK: cls(days=7 * count),
            ExpirationUnit.MONTH: cls(months=count),
            ExpirationUnit.YEAR: cls(months=12 * count),
        }[u]

    def __str__(self) -> str:
        y, mo = divmod(self.months, 12)
        h, rest = divmod(self.seconds, 3600)
        mi, s = divmod(rest, 60)
        date = "".join(f"{v}{u}" for v, u in ((y, "Y"), (mo, "M"), (self.days, "D")) if v)
        time = "".join(f"{v}{u}" for v, u in ((h, "H"), (mi, "M"), (s, "S")) if v)
        return "P" + date + ("T" + time if time else "")

    def times(self, start: datetime, n: int) -> datetime:
        """start + n x self, months first (clamped to the month's last day), then the fixed part."""
        return add_months(start, self.months * n) + timedelta(days=self.days * n, seconds=self.seconds * n)

    def approx_seconds(self) -> float:
        # Only to guess an index that is then corrected by exact comparisons; never used for amounts.
        return self.months * 2_629_746 + self.days * 86_400 + self.seconds


def add_months(t: datetime, months: int) -> datetime:
    """t moved by whole months, the day clamped to the target month's length (Jan 31 + 1 month = Feb 28/29)."""
    if months == 0:
        return t
    total = t.year * 12 + (t.month - 1) + months
    year, month0 = divmod(total, 12)
    day = min(t.day, calendar.monthrange(year, month0 + 1)[1])
    return t.replace(year=year, month=month0 + 1, day=day)


def require_utc(t: datetime, name: str) -> datetime:
    """The same instant in UTC; naive datetimes are refused (they have no instant)."""
    if t.tzinfo is None or t.utcoffset() is None:
        raise EngineInputError("datetime must be timezone-aware", field=name)
    return t.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Recurrence:
    """Instants anchor + n x interval for every integer n (also before the anchor).

    Used for usage periods (boundaries = automatic resets) and grant recurrences (balance back to amount).
    """

    interval: Period
    anchor: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "anchor", require_utc(self.anchor, "anchor"))

    def boundary(self, n: int) -> datetime:
        return self.interval.times(self.anchor, n)

    def index_at_or_before(self, t: datetime) -> int:
        """The largest n with boundary(n) <= t."""
        n = int((t - self.anchor).total_seconds() // self.interval.approx_seconds())
        while self.boundary(n) > t:
            n -= 1
        while self.boundary(n + 1) <= t:
            n += 1
        return n

    def at_or_before(self, t: datetime) -> datetime:
        return self.boundary(self.index_at_or_before(t))

    def after(self, t: datetime) -> datetime:
        """The first boundary strictly after t."""
        return self.boundary(self.index_at_or_before(t) + 1)

    def between(self, start: datetime, end: datetime) -> list[datetime]:
        """Boundaries b with start < b < end, in order."""
        out: list[datetime] = []
        n = self.index_at_or_before(start) + 1
        b = self.boundary(n)
        while b < end:
            out.append(b)
            n += 1
            b = self.boundary(n)
        return out
