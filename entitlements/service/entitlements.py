"""Entitlements: boolean, static and metered; at most one active per owner (subject or customer) and feature."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Literal

import orjson
import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from common.errors import InvalidInput
from entitlements import bounds, engine, quotas
from entitlements.db.repositories import (
    CustomerRepository,
    EntitlementFilters,
    EntitlementRepository,
    FeatureRepository,
    SnapshotRepository,
)
from entitlements.domain import (
    Entitlement,
    EntitlementExists,
    EntitlementNotFound,
    EntitlementType,
    Feature,
    FeatureArchived,
    FeatureNotFound,
    Owner,
    OwnerRef,
    UsagePeriod,
    new_id,
)
from entitlements.service.deps import Deps
from entitlements.service.owners import owns, resolve_owner

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
        self.deps = deps

    async def create(self, namespace: str, owner_ref: OwnerRef, spec: EntitlementInput) -> Entitlement:
        """A subject's entitlement (its customer's, if it has one) or a customer's."""
        now = self.deps.clock.now()
        if spec.feature_id is None and spec.feature_key is None:
            raise InvalidInput("featureId or featureKey is required", field="featureKey")
        owners: list[Owner] = []

        def tx(s: Session) -> Entitlement:
            owner = resolve_owner(s, namespace, owner_ref)
            owners.append(owner)
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
            entitlement = self._build(namespace, owner, feature, spec, now)
            repo = EntitlementRepository(s, lock_rows=self.deps.db.locks_rows)
            existing = repo.active_for(namespace, owner.key, feature.id, owner.customer_id)
            if existing is not None:
                raise EntitlementExists(owner, feature.key, existing.id)
            quotas.check_entitlements(s, self.deps.quotas, namespace, owner.key)
            repo.add(entitlement)
            return entitlement

        try:
            created = await self.deps.writing(tx)
        except IntegrityError:
            # A concurrent create won the unique index on active (namespace, owner, feature).
            winner = await self._active_for_key(namespace, owners[-1], spec)
            raise EntitlementExists(
                owners[-1], spec.feature_key or spec.feature_id or "", winner.id if winner else "?"
            ) from None
        self.deps.changed_owner(namespace, owners[-1])
        log.info("entitlement_created", entitlement_id=created.id, owner=owners[-1].key, feature=created.feature_key)
        return created

    async def _active_for_key(self, namespace: str, owner: Owner, spec: EntitlementInput) -> Entitlement | None:
        def tx(s: Session) -> Entitlement | None:
            repo = EntitlementRepository(s, lock_rows=False)
            if spec.feature_key is not None:
                return repo.active_for_feature_key(namespace, owner.key, spec.feature_key, owner.customer_id)
            return repo.active_for(namespace, owner.key, spec.feature_id or "", owner.customer_id)

        return await self.deps.reading(tx)

    def _build(
        self, namespace: str, owner: Owner, feature: Feature, spec: EntitlementInput, now: datetime
    ) -> Entitlement:
        if feature.archived_at is not None:
            raise FeatureArchived(feature.key)
        base = Entitlement(
            id=new_id(),
            namespace=namespace,
            subject_key=owner.key,
            customer_id=owner.customer_id,
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
        self, namespace: str, owner_ref: OwnerRef, id_or_feature_key: str, spec: EntitlementInput
    ) -> Entitlement:
        """PUT .../override: replace the owner's active entitlement for the feature in one transaction."""
        now = self.deps.clock.now()
        owners: list[Owner] = []

        def tx(s: Session) -> Entitlement:
            owner = resolve_owner(s, namespace, owner_ref)
            owners.append(owner)
            repo = EntitlementRepository(s, lock_rows=self.deps.db.locks_rows)
            current = find_entitlement(repo, namespace, owner_ref, id_or_feature_key, for_update=True)
            if current is None or current.deleted_at is not None:
                raise EntitlementNotFound(id_or_feature_key, owner_ref)
            feature = FeatureRepository(s).get(namespace, spec.feature_id or spec.feature_key or current.feature_id)
            if feature is None:
                raise FeatureNotFound(spec.feature_id or spec.feature_key or current.feature_id)
            if feature.id != current.feature_id:
                raise InvalidInput("an override must keep the feature of the entitlement it replaces")
            replacement = self._build(namespace, owner, feature, spec, now)
            repo.mark_deleted(namespace, current.id, now)
            s.flush()
            repo.add(replacement)
            return replacement

        created = await self.deps.writing(tx)
        self.deps.changed_owner(namespace, owners[-1])
        log.info("entitlement_overridden", entitlement_id=created.id, owner=owners[-1].key)
        return created

    async def get(
        self, namespace: str, owner_ref: OwnerRef | None, id_or_feature_key: str, *, include_deleted: bool = True
    ) -> Entitlement:
        def tx(s: Session) -> Entitlement | None:
            repo = EntitlementRepository(s, lock_rows=False)
            return find_entitlement(repo, namespace, owner_ref, id_or_feature_key)

        found = await self.deps.reading(tx)
        if found is None or (not include_deleted and found.deleted_at is not None):
            raise EntitlementNotFound(id_or_feature_key, owner_ref)
        return found

    async def search(
        self,
        namespace: str,
        *,
        subject_keys: Sequence[str] = (),
        customer_ids: Sequence[str] = (),
        feature_keys: Sequence[str] = (),
        include_deleted: bool = False,
        limit: int = MAX_PAGE,
        offset: int = 0,
        customers_only: bool = False,
        types: Sequence[str] = (),
        order_by: str = "createdAt",
        descending: bool = False,
    ) -> list[Entitlement]:
        """Filtered by owner: a subject's entitlements are its own and its customer's; `customer_ids` are ids.
        `customers_only`: customers' entitlements only (the v2 lists)."""

        def tx(s: Session) -> list[Entitlement]:
            f = owner_filters(s, namespace, subject_keys, customer_ids, feature_keys, include_deleted)
            f = replace(f, customers_only=customers_only, types=tuple(types))
            return EntitlementRepository(s, lock_rows=False).search(
                namespace, f, limit=min(limit, MAX_PAGE), offset=offset, order_by=order_by, descending=descending
            )

        return await self.deps.reading(tx)

    async def count(
        self,
        namespace: str,
        *,
        subject_keys: Sequence[str] = (),
        customer_ids: Sequence[str] = (),
        feature_keys: Sequence[str] = (),
        include_deleted: bool = False,
        customers_only: bool = False,
        types: Sequence[str] = (),
    ) -> int:
        """How many entitlements `search` pages through with these filters."""

        def tx(s: Session) -> int:
            f = owner_filters(s, namespace, subject_keys, customer_ids, feature_keys, include_deleted)
            f = replace(f, customers_only=customers_only, types=tuple(types))
            return EntitlementRepository(s, lock_rows=False).count(namespace, f)

        return await self.deps.reading(tx)

    async def active_of_owners(self, namespace: str, owners: Sequence[OwnerRef]) -> dict[OwnerRef, list[Entitlement]]:
        """Every active entitlement of each owner as asked (a subject's are its customer's), in one transaction."""

        def tx(s: Session) -> dict[OwnerRef, list[Entitlement]]:
            repo = EntitlementRepository(s, lock_rows=False)
            out: dict[OwnerRef, list[Entitlement]] = {}
            resolved = {ref: resolve_owner(s, namespace, ref) for ref in dict.fromkeys(owners)}
            subject_keys = [o.key for o in resolved.values() if o.customer is None]
            customer_ids = [o.key for o in resolved.values() if o.customer is not None]
            found: list[Entitlement] = []
            while True:
                f = EntitlementFilters(subject_keys=subject_keys, customer_ids=customer_ids, owners_given=True)
                page = repo.search(namespace, f, limit=MAX_PAGE, offset=len(found))
                found += page
                if len(page) < MAX_PAGE:
                    break
            for ref, owner in resolved.items():
                out[ref] = [e for e in found if owns(owner, e)]
            return out

        return await self.deps.reading(tx)

    async def delete(self, namespace: str, owner_ref: OwnerRef, id_or_feature_key: str) -> None:
        """Delete the owner's entitlement, named by id (or, on the customer routes, by feature key)."""
        now = self.deps.clock.now()
        owners: list[Owner] = []

        def tx(s: Session) -> str | None:
            owner = resolve_owner(s, namespace, owner_ref)
            owners.append(owner)
            repo = EntitlementRepository(s, lock_rows=self.deps.db.locks_rows)
            found = find_entitlement(repo, namespace, owner_ref, id_or_feature_key, for_update=True)
            if found is None or not owns(owner, found) or found.deleted_at is not None:
                return None
            repo.mark_deleted(namespace, found.id, now)
            SnapshotRepository(s).delete_all(found.id)
            return found.id

        deleted = await self.deps.writing(tx)
        if deleted is None:
            raise EntitlementNotFound(id_or_feature_key, owner_ref)
        self.deps.changed_owner(namespace, owners[-1])
        log.info("entitlement_deleted", entitlement_id=deleted, owner=owners[-1].key)


def find_entitlement(
    repo: EntitlementRepository,
    namespace: str,
    owner: OwnerRef | None,
    id_or_feature_key: str,
    *,
    for_update: bool = False,
) -> Entitlement | None:
    """By id (checking the owner when given), else the owner's active entitlement for that feature key."""
    resolved = None if owner is None else resolve_owner(repo.s, namespace, owner)
    found = repo.get(namespace, id_or_feature_key, for_update=for_update)
    if found is not None:
        return found if resolved is None or owns(resolved, found) else None
    if resolved is None:
        return None
    by_key = repo.active_for_feature_key(namespace, resolved.key, id_or_feature_key, resolved.customer_id)
    if by_key is not None and for_update:
        return repo.get(namespace, by_key.id, for_update=True)
    return by_key


def owner_filters(
    s: Session,
    namespace: str,
    subject_keys: Sequence[str],
    customer_ids: Sequence[str],
    feature_keys: Sequence[str],
    include_deleted: bool,
) -> EntitlementFilters:
    """Repository filters for owners named by subject (its own and its customer's) or by customer id."""
    held = CustomerRepository(s).holders(namespace, subject_keys)
    return EntitlementFilters(
        subject_keys=tuple(subject_keys),
        customer_ids=tuple(dict.fromkeys([*customer_ids, *held.values()])),
        feature_keys=tuple(feature_keys),
        include_deleted=include_deleted,
        owners_given=bool(subject_keys or customer_ids),
    )
