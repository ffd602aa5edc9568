"""The API's limits on entitlement inputs, checked before anything is written (pure).

They are the engine's and the storage's limits, stated once, so a value the API accepts can always be stored
(the same on SQLite and PostgreSQL), read back and computed with; a value outside them is a 400 that names
the limit. Documented in entitlements/README.md ("Limits").
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from common.cloudevents import MAX_EVENT_TIME, MIN_EVENT_TIME
from common.errors import InvalidInput
from entitlements import engine

# Amounts: at most 38 significant digits, 29 of them before the point and 18 after: exact in the engine
# (which computes with 100 digits and refuses to round), and at most 49 characters of text in either database.
MAX_SIGNIFICANT = 38
MAX_INTEGER_DIGITS = 29
MAX_SCALE = 18
# Instants: one range for every time field of the API, events' included (common.cloudevents). An expiration or
# a period added to the latest still fits a datetime.
EARLIEST = MIN_EVENT_TIME
LATEST = MAX_EVENT_TIME
# Usage periods, recurrences and expirations: at least an hour (OpenMeter's minimum usage period), at most
# 100 years; an interval's text at most 32 characters.
MIN_PERIOD = timedelta(hours=1)
MAX_PERIOD_MONTHS = 1200
MAX_INTERVAL_TEXT = 32
MAX_PRIORITY = 255


def amount(value: Decimal, field: str) -> Decimal:
    if not value.is_finite() or value < 0:
        raise InvalidInput(f"{field} must be a finite number >= 0", field=field)
    if value == 0:
        return Decimal(0)
    if value.adjusted() >= MAX_INTEGER_DIGITS:
        raise InvalidInput(f"{field} must be below 1e{MAX_INTEGER_DIGITS}", field=field)
    # Digits and scale without trailing zeros, read off the tuple (no context arithmetic, no rounding).
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    kept = len(digits)
    while exponent < 0 and kept > 1 and digits[kept - 1] == 0:
        kept -= 1
        exponent += 1
    if -exponent > MAX_SCALE:
        raise InvalidInput(f"{field} has more than {MAX_SCALE} decimal places", field=field)
    if kept > MAX_SIGNIFICANT:
        raise InvalidInput(f"{field} has more than {MAX_SIGNIFICANT} significant digits", field=field)
    return value


def instant(value: datetime, field: str) -> datetime:
    if not EARLIEST <= value < LATEST:
        raise InvalidInput(f"{field} must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d} (UTC)", field=field)
    return value


def period(text: str, field: str) -> engine.Period:
    """A usage period or recurrence interval within bounds."""
    if len(text) > MAX_INTERVAL_TEXT:
        raise InvalidInput(f"{field} is longer than {MAX_INTERVAL_TEXT} characters", field=field)
    try:
        parsed = engine.Period.parse(text)
    except (engine.EngineInputError, ValueError):
        raise InvalidInput(
            f"{field} must be DAY, WEEK, MONTH, YEAR or an ISO 8601 duration such as P1M or PT6H", field=field
        ) from None
    return within(parsed, field)


def within(parsed: engine.Period, field: str) -> engine.Period:
    days_part = timedelta(days=parsed.days, seconds=parsed.seconds)
    if parsed.months == 0 and days_part < MIN_PERIOD:
        raise InvalidInput(f"{field} must be at least one hour", field=field)
    if parsed.months + days_part / timedelta(days=30) > MAX_PERIOD_MONTHS:
        raise InvalidInput(f"{field} must be at most 100 years", field=field)
    return parsed


def priority(value: int, field: str) -> int:
    if not 0 <= value <= MAX_PRIORITY:
        raise InvalidInput(f"{field} must be between 0 and {MAX_PRIORITY}", field=field)
    return value
