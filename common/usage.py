"""Ports between the aggregator (meters, usage) and the entitlements package.

The aggregator implements these (ClickHouseUsageReader, the meter service); entitlements depends only on
the Protocols, and its unit tests use in-memory fakes. Instants are aware UTC datetimes; windows are
half-open [start, end). Amounts are Decimal, never float.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Protocol


@dataclass(frozen=True, slots=True)
class MeterRef:
    """What entitlements need to know of a meter."""

    slug: str
    aggregation: str  # SUM, COUNT, UNIQUE_COUNT, AVG, MIN, MAX, LATEST
    event_type: str
    group_by: Mapping[str, str] = field(default_factory=dict)  # name -> JSONPath


#: One subject key, or several (a customer's subjects): their usage is summed.
Subjects = str | tuple[str, ...]


def subject_list(subject: Subjects) -> list[str]:
    return [subject] if isinstance(subject, str) else list(subject)


class MeterCatalog(Protocol):
    async def get_meter(self, namespace: str, slug: str) -> MeterRef | None: ...


class UsageReader(Protocol):
    async def usage(
        self,
        namespace: str,
        meter_slug: str,
        subject: Subjects,
        group_by_filters: Mapping[str, str],
        start: datetime,
        end: datetime,
    ) -> Decimal:
        """The meter's aggregate over [start, end) for the subject(s), filtered by group-by values."""
        ...

    async def usage_windows(
        self,
        namespace: str,
        meter_slug: str,
        subject: Subjects,
        group_by_filters: Mapping[str, str],
        boundaries: Sequence[datetime],
    ) -> list[Decimal]:
        """Usage in each consecutive window [boundaries[i], boundaries[i+1]) in one round trip."""
        ...

    async def usage_by_subject(
        self,
        namespace: str,
        meter_slug: str,
        subjects: Sequence[str],
        group_by_filters: Mapping[str, str],
        boundaries: Sequence[datetime],
    ) -> dict[str, list[Decimal]]:
        """Each subject's usage in each window [boundaries[i], boundaries[i+1]), in one round trip (many
        entitlements read at once); subjects with no usage may be absent."""
        ...

    async def stored_after(
        self, namespace: str, meter_slug: str, subject: Subjects, *, before: datetime, after: datetime
    ) -> bool:
        """Whether an event of the meter's type for the subject(s) with time < before was stored after `after`.

        A balance snapshot taken at wall time W for instant T is stale when this is true for (T, W): an event
        older than T arrived after the snapshot (a late event). An unknown meter answers True (cannot tell:
        recomputing is always correct)."""
        ...


class CustomerDirectory(Protocol):
    """Customers' usage attribution, for meter queries filtered or grouped by customer (entitlements implements it)."""

    async def attributions(self, namespace: str, customers: Sequence[str]) -> dict[str, tuple[str, tuple[str, ...]]]:
        """Customer id or key as asked -> (customer id, the subject keys whose usage is the customer's);
        customers not found are absent."""
        ...


class CatalogLock(Protocol):
    """Serialises changes to the meter catalogue across every API process (the state database provides it)."""

    def hold(self, key: str) -> AbstractAsyncContextManager[None]: ...

    def hold_sync(self, key: str) -> AbstractContextManager[None]:
        """The same lock, for code running in a worker thread (the meter roller)."""
        ...


class MeterUseGuard(Protocol):
    """Asked before a meter is deleted: a meter that a feature uses cannot be (409)."""

    async def features_using_meter(self, namespace: str, meter_slug: str) -> list[str]: ...
