"""Features: what a subject may be entitled to, optionally measured by a meter (filtered by group-by values)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from common.errors import InvalidInput
from entitlements import quotas
from entitlements.db.repositories import FeatureRepository
from entitlements.domain import Feature, FeatureKeyTaken, FeatureNotFound, MeterNotFound, new_id
from entitlements.service.deps import Deps

log = structlog.get_logger(__name__)

KEY_PATTERN = re.compile(r"^[a-z0-9]+(?:[_-][a-z0-9]+)*$")
MAX_PAGE = 1000


BALANCE_AGGREGATIONS = frozenset({"SUM", "COUNT"})


@dataclass(frozen=True, slots=True)
class FeatureInput:
    key: str
    name: str
    meter_slug: str | None = None
    meter_group_by_filters: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)


class FeatureService:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    async def create(self, namespace: str, spec: FeatureInput) -> Feature:
        if not KEY_PATTERN.match(spec.key) or len(spec.key) > 64:
            raise InvalidInput("key must be 1-64 lowercase letters, digits, '_' or '-' (not at the ends)", field="key")
        if not spec.name.strip():
            raise InvalidInput("name must not be empty", field="name")
        if spec.meter_group_by_filters and spec.meter_slug is None:
            raise InvalidInput("meterGroupByFilters needs a meterSlug", field="meterGroupByFilters")
        if spec.meter_slug is not None:
            meter = await self.deps.meters.get_meter(namespace, spec.meter_slug)
            if meter is None:
                raise MeterNotFound(spec.meter_slug)
            if meter.aggregation.upper() not in BALANCE_AGGREGATIONS:
                # A balance burns the sum of per-window usage; the maximum (or unique count, average, latest)
                # of a period is not the sum of its windows' values. OpenMeter refuses these too.
                raise InvalidInput(
                    f"meter {meter.slug!r} aggregates with {meter.aggregation.upper()}: features support only "
                    "meters with SUM or COUNT aggregation (a balance is a sum of usage)",
                    field="meterSlug",
                )
            unknown = sorted(set(spec.meter_group_by_filters) - set(meter.group_by))
            if unknown:
                raise InvalidInput(
                    f"meterGroupByFilters keys {unknown} are not group-by keys of meter {meter.slug!r} "
                    f"(it has {sorted(meter.group_by)})",
                    field="meterGroupByFilters",
                )
        now = self.deps.clock.now()
        feature = Feature(
            id=new_id(),
            namespace=namespace,
            key=spec.key,
            name=spec.name,
            meter_slug=spec.meter_slug,
            meter_group_by_filters=dict(spec.meter_group_by_filters),
            metadata=dict(spec.metadata),
            created_at=now,
            updated_at=now,
        )

        def tx() -> Feature:
            with self.deps.db.write() as s:
                repo = FeatureRepository(s)
                existing = repo.active_by_key(namespace, spec.key)
                if existing is not None:
                    raise FeatureKeyTaken(spec.key, existing.id)
                quotas.check_features(s, self.deps.quotas, namespace)
                repo.add(feature)
            return feature

        try:
            created = await self.deps.in_thread(tx)
        except IntegrityError:
            # A concurrent create won the unique index on (namespace, key) among active features.
            winner = await self.deps.in_thread(lambda: self._active_by_key(namespace, spec.key))
            raise FeatureKeyTaken(spec.key, winner.id if winner else "?") from None
        log.info("feature_created", feature_id=created.id, key=created.key, meter=created.meter_slug)
        return created

    def _active_by_key(self, namespace: str, key: str) -> Feature | None:
        with self.deps.db.read() as s:
            return FeatureRepository(s).active_by_key(namespace, key)

    async def get(self, namespace: str, id_or_key: str) -> Feature:
        def tx(s: Session) -> Feature | None:
            return FeatureRepository(s).get(namespace, id_or_key)

        found = await self.deps.reading(tx)
        if found is None:
            raise FeatureNotFound(id_or_key)
        return found

    async def search(
        self,
        namespace: str,
        *,
        include_archived: bool = False,
        meter_slugs: Sequence[str] = (),
        limit: int = MAX_PAGE,
        offset: int = 0,
    ) -> list[Feature]:
        def tx(s: Session) -> list[Feature]:
            return FeatureRepository(s).search(
                namespace,
                include_archived=include_archived,
                meter_slugs=meter_slugs,
                limit=min(limit, MAX_PAGE),
                offset=offset,
            )

        return await self.deps.reading(tx)

    async def count(self, namespace: str, *, include_archived: bool = False, meter_slugs: Sequence[str] = ()) -> int:
        """How many features `search` pages through with these filters."""

        def tx(s: Session) -> int:
            return FeatureRepository(s).count(namespace, include_archived=include_archived, meter_slugs=meter_slugs)

        return await self.deps.reading(tx)

    async def archive(self, namespace: str, id_or_key: str) -> Feature:
        """DELETE archives: existing entitlements keep working, new ones cannot use the feature."""
        now = self.deps.clock.now()

        def tx(s: Session) -> Feature | None:
            repo = FeatureRepository(s)
            found = repo.get(namespace, id_or_key)
            if found is None:
                return None
            repo.archive(namespace, found.id, now)
            return repo.get(namespace, found.id)

        archived = await self.deps.writing(tx)
        if archived is None:
            raise FeatureNotFound(id_or_key)
        log.info("feature_archived", feature_id=archived.id, key=archived.key)
        return archived

    async def features_using_meter(self, namespace: str, meter_slug: str) -> list[str]:
        """MeterUseGuard: active feature keys that measure with this meter (a meter in use cannot be deleted)."""

        def tx(s: Session) -> list[str]:
            return FeatureRepository(s).active_keys_using_meter(namespace, meter_slug)

        return await self.deps.reading(tx)
