"""ClickHouseUsageReader: the aggregator's implementation of common.usage.UsageReader for entitlements.

Usage comes from the same exact path as the meter query API (rollup minutes + raw edges), so a balance
and a meter query never disagree. Windows with no valid events are Decimal(0).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from aggregator import sql
from aggregator.query import InvalidQuery
from aggregator.service import MeterNotFound, MeterService
from common.usage import Subjects, subject_list


def ceil_to_millisecond(t: datetime) -> datetime:
    """Event times are whole milliseconds, so [a, b) holds the same events as [ceil_ms(a), ceil_ms(b)).

    Callers (grant activations, entitlement creation at `now()`) may pass microseconds; ClickHouse's
    DateTime64(3) would truncate them, counting an event at .547 in a window that starts at .547123.
    """
    if t.microsecond % 1000 == 0:
        return t
    return t.replace(microsecond=0) + timedelta(milliseconds=t.microsecond // 1000 + 1)


class ClickHouseUsageReader:
    def __init__(self, meters: MeterService) -> None:
        self.meters = meters

    async def usage(
        self,
        namespace: str,
        meter_slug: str,
        subject: Subjects,
        group_by_filters: Mapping[str, str],
        start: datetime,
        end: datetime,
    ) -> Decimal:
        return (await self.usage_windows(namespace, meter_slug, subject, group_by_filters, [start, end]))[0]

    async def usage_windows(
        self,
        namespace: str,
        meter_slug: str,
        subject: Subjects,
        group_by_filters: Mapping[str, str],
        boundaries: Sequence[datetime],
    ) -> list[Decimal]:
        bounds = _bounds(boundaries)
        out = [Decimal(0)] * max(0, len(bounds) - 1)
        windows = await self._windows(namespace, meter_slug, tuple(subject_list(subject)), group_by_filters, bounds)
        for _, i, value in windows or ():
            out[i] = value
        return out

    async def usage_by_subject(
        self,
        namespace: str,
        meter_slug: str,
        subjects: Sequence[str],
        group_by_filters: Mapping[str, str],
        boundaries: Sequence[datetime],
    ) -> dict[str, list[Decimal]]:
        bounds = _bounds(boundaries)
        wanted = tuple(dict.fromkeys(subjects))
        out: dict[str, list[Decimal]] = {}
        for subject, i, value in (
            await self._windows(namespace, meter_slug, wanted, group_by_filters, bounds, True) or ()
        ):
            assert subject is not None
            out.setdefault(subject, [Decimal(0)] * (len(bounds) - 1))[i] = value
        return out

    async def _windows(
        self,
        namespace: str,
        meter_slug: str,
        subjects: tuple[str, ...],
        group_by_filters: Mapping[str, str],
        bounds: tuple[datetime, ...],
        per_subject: bool = False,
    ) -> list[tuple[str | None, int, Decimal]] | None:
        """(subject, window index, value) rows of one query; None when there is nothing to ask: fewer than
        two bounds, an empty range, or no subjects (never "every subject")."""
        if len(bounds) < 2 or bounds[0] == bounds[-1] or not subjects:
            return None
        meter = await self.meters.get(namespace, meter_slug)
        unknown = sorted(set(group_by_filters) - set(meter.group_by))
        if unknown:
            raise InvalidQuery(f"unknown group-by key(s) {', '.join(unknown)} for meter {meter.slug}", field="filters")
        q = sql.Query(
            meter=meter,
            namespace=namespace,
            start=bounds[0],
            end=bounds[-1],
            boundaries=bounds,
            subjects=subjects,
            filters=tuple(sorted(group_by_filters.items())),
            group_subject=per_subject,
        )
        # A repeated boundary makes an empty window; rows land in the last window starting there.
        window_at = {b: i for i, b in enumerate(bounds[:-1])}
        return [(row.subject, window_at[row.window_start], row.value) for row in await self.meters.run(q)]

    async def stored_after(
        self, namespace: str, meter_slug: str, subject: Subjects, *, before: datetime, after: datetime
    ) -> bool:
        subjects = subject_list(subject)
        if not subjects:
            return False
        try:
            meter = await self.meters.get(namespace, meter_slug)
        except MeterNotFound:
            return True  # cannot tell: treat the snapshot as stale (a recomputation is always correct)
        return await asyncio.to_thread(self.meters.repository.stored_after, meter, namespace, subjects, before, after)


def _bounds(boundaries: Sequence[datetime]) -> tuple[datetime, ...]:
    bounds = tuple(ceil_to_millisecond(b.astimezone(UTC)) for b in boundaries)
    if any(a > b for a, b in itertools.pairwise(bounds)):
        raise InvalidQuery("usage window boundaries must not decrease", field="boundaries")
    return bounds
