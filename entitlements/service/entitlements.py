"""Entitlements: boolean, static and metered; at most one active per subject and feature."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Literal

import orjson
import structlog
from sqlalchemy.exc import IntegrityError

from common.errors import InvalidInput
from entitlements import bounds, engine, quotas
from entitlements.db.repositories import EntitlementRepository, FeatureRepository, SnapshotRepository
from entitlements.domain import (
    Entitlement,
    EntitlementExists,
    EntitlementNotFound,
    EntitlementType,
    Feature,
    FeatureArchived,
    FeatureNotFound,
    UsagePeriod,
    new_id,
)
from entitlements.service.deps import Deps

log = structlog.get_logger(__name__)

MeasureFrom = datetime | Literal["CURRENT_PERIOD_START", "NOW"]
MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class EntitlementInput:
    type: EntitlementType
    feature_id: str | None = None
    feature_key: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    config: str | None = None
    usage_period_interval: str | None = None
    usage_period_anchor: datetime | None = None
    measure_usage_from: MeasureFrom | None = None
    is_soft_limit: bool = False
    issue_after_reset: Decimal | None = None
    issue_after_reset_priority: int = 1
    preserve_overage_at_reset: bool = False


def normalise_config(config: object) -> str:
    """A static entitlement's config: a JSON object, given as an object or as JSON text (OpenMeter's form)."""
    value = config
    if isinstance(config, str):
        try:
            value = orjson.loads(config)
        except orjson.JSONDecodeError:
            raise InvalidInput("config must be a JSON object (or JSON text of one)", field="config") from None
    if not isinstance(value, dict):
        raise InvalidInput("config must be a JSON object", field="config")
    return orjson.dumps(value).decode()


class EntitlementService:
    def __init__(self, deps: Deps) -> None:
        self.d = deps

    async def create(self, namespace: str, subject_key: str, spec: EntitlementInput) -> Entitlement:
        now = self.d.clock.now()
        if spec.feature_id is None and spec.feature_key is None:
            raise InvalidInput("featureId or featureKey is required", field="featureKey")

        def tx() -> Entitlement:
            with self.d.db.write() as s:
                features = FeatureRepository(s)
                feature = (
                    features.get(namespace, spec.feature_id)
                    if spec.feature_id is not None
                    else features.active_by_key(namespace, spec.feature_key or "")
                )
                if feature is None:
                    raise FeatureNotFound(spec.feature_id or spec.feature_key or "")
                if spec.feature_key is not None and feature.key != spec.feature_key:
                    raise InvalidInput("featureId and featureKey name different features", field="featureKey")
                entitlement = self._build(namespace, subject_key, feature, spec, now)
                repo = EntitlementRepository(s, lock_rows=self.d.db.locks_rows)
                existing = repo.active_for(namespace, subject_key, feature.id)
                if existing is not None:
                    raise EntitlementExists(subject_key, feature.key, existing.id)
                quotas.check_entitlements(s, self.d.quotas, namespace, subject_key)
                repo.add(entitlement)
                return entitlement

        try:
            created = await self.d.in_thread(tx)
        except IntegrityError:
            # A concurrent create won the unique index on active (namespace, subject, feature).
            winner = await self._active_for_key(namespace, subject_key, spec)
            raise EntitlementExists(
                subject_key, spec.feature_key or spec.feature_id or "", winner.id if winner else "?"
            ) from None
        self.d.changed(namespace, subject_key)
        log.info("entitlement_created", entitlement_id=created.id, subject=subject_key, feature=created.feature_key)
        return created

    async def _active_for_key(self, namespace: str, subject_key: str, spec: EntitlementInput) -> Entitlement | None:
        def tx() -> Entitlement | None:
            with self.d.db.read() as s:
                repo = EntitlementRepository(s, lock_rows=False)
                if spec.feature_key is not None:
                    return repo.active_for_feature_key(namespace, subject_key, spec.feature_key)
                return repo.active_for(namespace, subject_key, spec.feature_id or "")

        return await self.d.in_thread(tx)

    def _build(
        self, namespace: str, subject_key: str, feature: Feature, spec: EntitlementInput, now: datetime
    ) -> Entitlement:
        if feature.archived_at is not None:
            raise FeatureArchived(feature.key)
        base = Entitlement(
            id=new_id(),
            namespace=namespace,
            subject_key=subject_key,
            feature_id=feature.id,
            feature_key=feature.key,
            type=spec.type,
            created_at=now,
            updated_at=now,
            metadata=dict(spec.metadata),
        )
        if spec.type is EntitlementType.BOOLEAN:
            return base
        if spec.type is EntitlementType.STATIC:
            if spec.config is None:
                raise InvalidInput("a static entitlement needs config", field="config")
            return replace(base, config=normalise_config(spec.config))
        if feature.meter_slug is None:
            raise InvalidInput(f"feature {feature.key!r} has no meter: it cannot back a metered entitlement")
        if spec.usage_period_interval is None:
            raise InvalidInput("a metered entitlement needs usagePeriod.interval", field="usagePeriod")
        interval = bounds.period(spec.usage_period_interval, "usagePeriod.interval")
        anchor = bounds.instant(spec.usage_period_anchor or now, "usagePeriod.anchor")
        cadence = engine.Recurrence(interval, anchor)
        measure = spec.measure_usage_from
        if measure is None or measure == "NOW":
            measure_from = now
        elif measure == "CURRENT_PERIOD_START":
            measure_from = cadence.at_or_before(now)
        else:
            measure_from = measure
        bounds.instant(measure_from, "measureUsageFrom")
        if spec.issue_after_reset is not None:
            bounds.amount(spec.issue_after_reset, "issueAfterReset")
        bounds.priority(spec.issue_after_reset_priority, "issueAfterResetPriority")
        return replace(
            base,
            usage_period=UsagePeriod(spec.usage_period_interval, anchor),
            measure_usage_from=measure_from,
            is_soft_limit=spec.is_soft_limit,
            issue_after_reset=spec.issue_after_reset,
            issue_after_reset_priority=spec.issue_after_reset_priority,
            preserve_overage_at_reset=spec.preserve_overage_at_reset,
        )

    async def override(
        self, namespace: str, subject_key: str, id_or_feature_key: str, spec: EntitlementInput
    ) -> Entitlement:
        """PUT .../override: replace the subject's active entitlement for the feature in one transaction."""
        now = self.d.clock.now()

        def tx() -> Entitlement:
            with self.d.db.write() as s:
                repo = EntitlementRepository(s, lock_rows=self.d.db.locks_rows)
                current = find_entitlement(repo, namespace, subject_key, id_or_feature_key, for_update=True)
                if current is None or current.deleted_at is not None:
                    raise EntitlementNotFound(id_or_feature_key, subject_key)
                feature = FeatureRepository(s).get(namespace, spec.feature_id or spec.feature_key or current.feature_id)
                if feature is None:
                    raise FeatureNotFound(spec.feature_id or spec.feature_key or current.feature_id)
                if feature.id != current.feature_id:
                    raise InvalidInput("an override must keep the feature of the entitlement it replaces")
                replacement = self._build(namespace, subject_key, feature, spec, now)
                repo.mark_deleted(namespace, current.id, now)
                s.flush()
                repo.add(replacement)
                return replacement

        created = await self.d.in_thread(tx)
        self.d.changed(namespace, subject_key)
        log.info("entitlement_overridden", entitlement_id=created.id, subject=subject_key)
        return created

    async def get(
        self, namespace: str, subject_key: str | None, id_or_feature_key: str, *, include_deleted: bool = True
    ) -> Entitlement:
        def tx() -> Entitlement | None:
            with self.d.db.read() as s:
                repo = EntitlementRepository(s, lock_rows=False)
                return find_entitlement(repo, namespace, subject_key, id_or_feature_key)

        found = await self.d.in_thread(tx)
        if found is None or (not include_deleted and found.deleted_at is not None):
            raise EntitlementNotFound(id_or_feature_key, subject_key)
        return found

    async def search(
        self,
        namespace: str,
        *,
        subject_keys: Sequence[str] = (),
        feature_keys: Sequence[str] = (),
        include_deleted: bool = False,
        limit: int = MAX_PAGE,
        offset: int = 0,
    ) -> list[Entitlement]:
        def tx() -> list[Entitlement]:
            with self.d.db.read() as s:
                return EntitlementRepository(s, lock_rows=False).search(
                    namespace,
                    subject_keys=subject_keys,
                    feature_keys=feature_keys,
                    include_deleted=include_deleted,
                    limit=min(limit, MAX_PAGE),
                    offset=offset,
                )

        return await self.d.in_thread(tx)

    async def count(
        self,
        namespace: str,
        *,
        subject_keys: Sequence[str] = (),
        feature_keys: Sequence[str] = (),
        include_deleted: bool = False,
    ) -> int:
        """How many entitlements `search` pages through with these filters."""

        def tx() -> int:
            with self.d.db.read() as s:
                return EntitlementRepository(s, lock_rows=False).count(
                    namespace, subject_keys=subject_keys, feature_keys=feature_keys, include_deleted=include_deleted
                )

        return await self.d.in_thread(tx)

    async def delete(self, namespace: str, subject_key: str, entitlement_id: str) -> None:
        now = self.d.clock.now()

        def tx() -> bool:
            with self.d.db.write() as s:
                repo = EntitlementRepository(s, lock_rows=self.d.db.locks_rows)
                found = repo.get(namespace, entitlement_id, for_update=True)
                if found is None or found.subject_key != subject_key or found.deleted_at is not None:
                    return False
                repo.mark_deleted(namespace, entitlement_id, now)
                SnapshotRepository(s).delete_all(entitlement_id)
                return True

        if not await self.d.in_thread(tx):
            raise EntitlementNotFound(entitlement_id, subject_key)
        self.d.changed(namespace, subject_key)
        log.info("entitlement_deleted", entitlement_id=entitlement_id, subject=subject_key)


def find_entitlement(
    repo: EntitlementRepository,
    namespace: str,
    subject_key: str | None,
    id_or_feature_key: str,
    *,
    for_update: bool = False,
) -> Entitlement | None:
    """By id (checking the subject when given), else the subject's active entitlement for that feature key."""
    found = repo.get(namespace, id_or_feature_key, for_update=for_update)
    if found is not None:
        return found if subject_key is None or found.subject_key == subject_key else None
    if subject_key is None:
        return None
    by_key = repo.active_for_feature_key(namespace, subject_key, id_or_feature_key)
    if by_key is not None and for_update:
        return repo.get(namespace, by_key.id, for_update=True)
    return by_key
