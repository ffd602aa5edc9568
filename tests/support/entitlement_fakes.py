"""In-memory fakes of the meter ports (common.usage) for entitlement tests, and a minimal app around the
entitlement router (the real app is metergate.app; these tests must not depend on ClickHouse)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from common.errors import MetergateError
from common.http import problem_for
from common.usage import MeterRef, Subjects, subject_list
from entitlements.http import router
from entitlements.service import Entitlements


@dataclass
class FakeMeters:
    meters: dict[str, MeterRef] = field(default_factory=dict)

    def add(self, slug: str, *group_by: str) -> MeterRef:
        ref = MeterRef(slug=slug, aggregation="SUM", event_type=slug, group_by={g: f"$.{g}" for g in group_by})
        self.meters[slug] = ref
        return ref

    async def get_meter(self, namespace: str, slug: str) -> MeterRef | None:
        return self.meters.get(slug)


@dataclass(frozen=True)
class FakeEvent:
    meter: str
    subject: str
    time: datetime
    value: Decimal
    stored_at: datetime
    groups: Mapping[str, str] = field(default_factory=dict)


@dataclass
class FakeUsage:
    """SUM meters over a list of events; counts calls and windows so tests can check a read's cost."""

    events: list[FakeEvent] = field(default_factory=list)
    calls: int = 0
    windows: int = 0
    bulk_calls: int = 0
    probes: int = 0
    stored_clock: Any = None

    def add(
        self,
        meter: str,
        subject: Subjects,
        time: datetime,
        value: Decimal | int | str,
        *,
        stored_at: datetime | None = None,
        **groups: str,
    ) -> None:
        self.events.append(
            FakeEvent(meter, subject, time, Decimal(value), stored_at or datetime.now(UTC), dict(groups))
        )

    def _match(self, e: FakeEvent, meter: str, subject: Subjects, filters: Mapping[str, str]) -> bool:
        return (
            e.meter == meter
            and e.subject in subject_list(subject)
            and all(e.groups.get(k) == v for k, v in filters.items())
        )

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
        self.calls += 1
        self.windows += len(boundaries) - 1
        out = []
        for a, b in itertools.pairwise(boundaries):
            out.append(
                sum(
                    (
                        e.value
                        for e in self.events
                        if self._match(e, meter_slug, subject, group_by_filters) and a <= e.time < b
                    ),
                    Decimal(0),
                )
            )
        return out

    async def usage_by_subject(
        self,
        namespace: str,
        meter_slug: str,
        subjects: Sequence[str],
        group_by_filters: Mapping[str, str],
        boundaries: Sequence[datetime],
    ) -> dict[str, list[Decimal]]:
        self.bulk_calls += 1
        out = {}
        for subject in dict.fromkeys(subjects):
            self.calls -= 1  # counted as one bulk call, not one per subject
            out[subject] = await self.usage_windows(namespace, meter_slug, subject, group_by_filters, boundaries)
        return out

    async def stored_after(
        self, namespace: str, meter_slug: str, subject: Subjects, *, before: datetime, after: datetime
    ) -> bool:
        self.probes += 1
        return any(
            e.meter == meter_slug and e.subject in subject_list(subject) and e.time < before and e.stored_at > after
            for e in self.events
        )


def entitlements_app(entitlements: Entitlements, namespace: str = "default") -> FastAPI:
    app = FastAPI()
    app.state.services = SimpleNamespace(entitlements=entitlements)

    @app.middleware("http")
    async def _namespace(request: Request, call_next: Any) -> Any:
        request.state.namespace = request.headers.get("x-namespace", namespace)
        return await call_next(request)

    @app.exception_handler(MetergateError)
    async def _problem(request: Request, exc: MetergateError) -> Response:
        return problem_for(exc)

    app.include_router(router)
    return app
