"""Balance history: usage and balance per window (in a time zone), plus the grant burn-down segments.

Window edges are computed in the requested IANA zone (so DAY windows follow local midnight across DST)
and converted to UTC. The engine runs once over the union of its planned instants and the window edges
(splitting a window never changes a result); usage is fetched in one round trip.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from zoneinfo import ZoneInfo

from common.errors import InvalidInput
from common.timezones import known_zone
from entitlements import engine
from entitlements.domain import OwnerRef
from entitlements.service.balance import BalanceService

ZERO = Decimal(0)
MAX_WINDOWS = 10_000


class WindowSize(StrEnum):
    MINUTE = "MINUTE"
    HOUR = "HOUR"
    DAY = "DAY"
    MONTH = "MONTH"


@dataclass(frozen=True, slots=True)
class HistoryWindow:
    start: datetime
    end: datetime
    usage: Decimal
    balance_at_start: Decimal


@dataclass(frozen=True, slots=True)
class History:
    windows: tuple[HistoryWindow, ...]
    segments: tuple[engine.Segment, ...]


def zone(name: str) -> ZoneInfo:
    found = known_zone(name)
    if found is None:
        raise InvalidInput(
            f"unknown time zone {name[:64]!r}: use an IANA name such as Europe/Berlin", field="windowTimeZone"
        )
    return found


def _floor(t: datetime, size: WindowSize) -> datetime:
    if size is WindowSize.MINUTE:
        return t.replace(second=0, microsecond=0)
    if size is WindowSize.HOUR:
        return t.replace(minute=0, second=0, microsecond=0)
    if size is WindowSize.DAY:
        return t.replace(hour=0, minute=0, second=0, microsecond=0)
    return t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _next(t: datetime, size: WindowSize) -> datetime:
    """The next window start in local wall time (re-localised, so DAY/MONTH follow DST)."""
    tz = t.tzinfo
    if size is WindowSize.MINUTE:
        return (t.astimezone(UTC) + timedelta(minutes=1)).astimezone(tz)
    if size is WindowSize.HOUR:
        return (t.astimezone(UTC) + timedelta(hours=1)).astimezone(tz)
    if size is WindowSize.DAY:
        naive = t.replace(tzinfo=None) + timedelta(days=1)
        return naive.replace(tzinfo=tz)
    month = t.month % 12 + 1
    year = t.year + (1 if t.month == 12 else 0)
    return t.replace(tzinfo=None, year=year, month=month).replace(tzinfo=tz)


def window_edges(start: datetime, end: datetime, size: WindowSize, tz: ZoneInfo) -> list[datetime]:
    """UTC edges start = e0 < e1 < ... < en = end; inner edges are local window starts. Pure."""
    edges = [start]
    local = _floor(start.astimezone(tz), size)
    while True:
        local = _next(local, size)
        edge = local.astimezone(UTC)
        if edge >= end:
            break
        if edge > edges[-1]:
            edges.append(edge)
        if len(edges) > MAX_WINDOWS:
            raise InvalidInput(f"more than {MAX_WINDOWS} windows: use a larger windowSize or a shorter range")
    if end > edges[-1]:
        edges.append(end)
    return edges


async def balance_history(
    balances: BalanceService,
    namespace: str,
    owner: OwnerRef,
    entitlement_id: str,
    *,
    start: datetime | None,
    end: datetime | None,
    size: WindowSize,
    tz: ZoneInfo,
) -> History:
    now = balances.deps.clock.now()
    end = end or now
    loaded = await balances.load_metered(namespace, owner, entitlement_id, start or end)
    assert loaded.inputs is not None
    measure_from = loaded.inputs.terms.measure_usage_from
    if start is None:
        from entitlements.service.terms import period_at

        start = period_at(loaded.inputs, end).start
    start = max(start, measure_from)
    if end <= start:
        if end < start and end > measure_from:
            raise InvalidInput("from must be before to", field="from")
        return History((), ())
    edges = window_edges(start, end, size, tz)
    computed = await balances.compute(loaded, end, edges)
    segments = [seg for seg in computed.result.segments if seg.start >= start]
    windows: list[HistoryWindow] = []
    i = 0
    for w_start, w_end in itertools.pairwise(edges):
        while i < len(segments) and segments[i].start < w_start:
            i += 1
        used = ZERO
        if i < len(segments):
            balance_at_start = segments[i].balance_at_start
        else:  # past the last segment: nothing changes any more, the balance is carried forward
            balance_at_start = segments[-1].balance_at_end if segments else ZERO
        j = i
        while j < len(segments) and segments[j].start < w_end:
            used += segments[j].usage
            j += 1
        # Every window, also those without usage (OpenMeter fills them with 0: metered/balance.go).
        windows.append(HistoryWindow(w_start, w_end, used, balance_at_start))
    return History(tuple(windows), tuple(engine.burndown(segments, computed.result.closed_by)))
