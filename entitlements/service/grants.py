"""Grants: credits on a metered entitlement. Creating, voiding (and resetting, in balance.py) is serialised
per entitlement and bumps its version, so a balance read never mixes states and stale snapshots are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal

import structlog
from sqlalchemy.orm import Session

from common.errors import InvalidInput
from entitlements import bounds, engine, quotas
from entitlements.db.repositories import EntitlementRepository, GrantRepository, SnapshotRepository
from entitlements.domain import (
    Entitlement,
    EntitlementNotFound,
    EntitlementType,
    Expiration,
    ExpirationDuration,
    Grant,
    GrantAlreadyVoided,
    GrantNotFound,
    NotMetered,
    Owner,
    OwnerRef,
    UsagePeriod,
    new_id,
)
from entitlements.service.deps import Deps
from entitlements.service.entitlements import find_entitlement, owner_filters
from entitlements.service.owners import owner_of
from entitlements.service.terms import expires_at

log = structlog.get_logger(__name__)

MAX_PAGE = 1000
MAX_PRIORITY = bounds.MAX_PRIORITY


@dataclass(frozen=True, slots=True)
class GrantInput:
    amount: Decimal
    effective_at: datetime
    expiration: Expiration | None
    priority: int = 1
    min_rollover_amount: Decimal = Decimal(0)
    max_rollover_amount: Decimal = Decimal(0)
    recurrence_interval: str | None = None
    recurrence_anchor: datetime | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


def _validate(spec: GrantInput) -> None:
    for name, value in (
        ("amount", spec.amount),
        ("minRolloverAmount", spec.min_rollover_amount),
        ("maxRolloverAmount", spec.max_rollover_amount),
    ):
        bounds.amount(value, name)
    if spec.min_rollover_amount > spec.max_rollover_amount:
        raise InvalidInput("minRolloverAmount must not exceed maxRolloverAmount", field="minRolloverAmount")
    bounds.priority(spec.priority, "priority")
    bounds.instant(spec.effective_at, "effectiveAt")
    if spec.expiration is not None:
        if spec.expiration.count < 1:
            raise InvalidInput("expiration.count must be at least 1", field="expiration.count")
        bounds.within(engine.Period.of_expiration(spec.expiration.duration.value, spec.expiration.count), "expiration")
    if spec.recurrence_interval is not None:
        bounds.period(spec.recurrence_interval, "recurrence.interval")
    if spec.recurrence_anchor is not None:
        bounds.instant(spec.recurrence_anchor, "recurrence.anchor")


class GrantService:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def validate(self, spec: GrantInput) -> None:
        """The checks `create` makes before it writes anything (a 400 naming the field)."""
        _validate(spec)

    async def create(self, namespace: str, owner_ref: OwnerRef, id_or_feature_key: str, spec: GrantInput) -> Grant:
        _validate(spec)
        now = self.deps.clock.now()
        recurrence = (
            UsagePeriod(spec.recurrence_interval, spec.recurrence_anchor or spec.effective_at)
            if spec.recurrence_interval is not None
            else None
        )

        owners: list[Owner] = []

        def tx(s: Session) -> Grant:
            ents = EntitlementRepository(s, lock_rows=self.deps.db.locks_rows)
            ent = find_entitlement(ents, namespace, owner_ref, id_or_feature_key, for_update=True)
            _require_metered(ent, id_or_feature_key, owner_ref)
            assert ent is not None
            owners.append(owner_of(s, ent))
            quotas.check_grants(s, self.deps.quotas, ent.id)
            grant = Grant(
                id=new_id(),
                namespace=namespace,
                entitlement_id=ent.id,
                amount=spec.amount,
                priority=spec.priority,
                effective_at=spec.effective_at,
                expiration=spec.expiration,
                expires_at=expires_at(spec.effective_at, spec.expiration),
                created_at=now,
                updated_at=now,
                min_rollover_amount=spec.min_rollover_amount,
                max_rollover_amount=spec.max_rollover_amount,
                recurrence=recurrence,
                metadata=dict(spec.metadata),
            )
            GrantRepository(s).add(grant)
            ents.bump_version(ent.id, now)
            # A backdated grant changes every state from its effective time on.
            SnapshotRepository(s).delete_from(ent.id, grant.effective_at)
            return grant

        grant = await self.deps.writing(tx)
        self.deps.changed_owner(namespace, owners[-1])
        log.info("grant_created", grant_id=grant.id, entitlement_id=grant.entitlement_id, amount=str(grant.amount))
        return grant

    async def list_for_entitlement(
        self, namespace: str, owner_ref: OwnerRef, id_or_feature_key: str, *, include_voided: bool = False
    ) -> list[Grant]:
        def tx(s: Session) -> list[Grant]:
            ent = find_entitlement(EntitlementRepository(s, lock_rows=False), namespace, owner_ref, id_or_feature_key)
            if ent is None:
                raise EntitlementNotFound(id_or_feature_key, owner_ref)
            grants = GrantRepository(s).for_entitlement(ent.id)
            return [g for g in grants if include_voided or g.voided_at is None]

        return await self.deps.reading(tx)

    async def search(
        self,
        namespace: str,
        *,
        subject_keys: Sequence[str] = (),
        customer_ids: Sequence[str] = (),
        feature_keys: Sequence[str] = (),
        include_voided: bool = False,
        limit: int = MAX_PAGE,
        offset: int = 0,
        customers_only: bool = False,
    ) -> list[Grant]:
        def tx(s: Session) -> list[Grant]:
            return GrantRepository(s).search(
                namespace,
                include_voided=include_voided,
                entitlement_ids=_entitlement_ids(
                    s, namespace, subject_keys, customer_ids, feature_keys, customers_only
                ),
                limit=min(limit, MAX_PAGE),
                offset=offset,
            )

        return await self.deps.reading(tx)

    async def count(
        self,
        namespace: str,
        *,
        subject_keys: Sequence[str] = (),
        customer_ids: Sequence[str] = (),
        feature_keys: Sequence[str] = (),
        include_voided: bool = False,
        customers_only: bool = False,
    ) -> int:
        """How many grants `search` pages through with these filters."""

        def tx(s: Session) -> int:
            return GrantRepository(s).count(
                namespace,
                include_voided=include_voided,
                entitlement_ids=_entitlement_ids(
                    s, namespace, subject_keys, customer_ids, feature_keys, customers_only
                ),
            )

        return await self.deps.reading(tx)

    async def void(self, namespace: str, grant_id: str) -> Grant:
        """The grant's balance ends now; usage already burnt from it stays burnt."""
        now = self.deps.clock.now()

        owners: list[Owner] = []

        def tx(s: Session) -> Grant:
            grants = GrantRepository(s)
            found = grants.get(namespace, grant_id)
            if found is None:
                raise GrantNotFound(grant_id)
            ents = EntitlementRepository(s, lock_rows=self.deps.db.locks_rows)
            ent = ents.get(namespace, found.entitlement_id, for_update=True)
            owners.extend(() if ent is None else (owner_of(s, ent),))
            found = grants.get(namespace, grant_id)  # re-read under the entitlement lock
            assert found is not None
            if found.voided_at is not None:
                raise GrantAlreadyVoided(grant_id)
            grants.void(grant_id, now)
            ents.bump_version(found.entitlement_id, now)
            SnapshotRepository(s).delete_from(found.entitlement_id, now)
            voided = grants.get(namespace, grant_id)
            assert voided is not None
            return voided

        voided = await self.deps.writing(tx)
        for owner in owners:
            self.deps.changed_owner(namespace, owner)
        log.info("grant_voided", grant_id=grant_id, entitlement_id=voided.entitlement_id)
        return voided


def _entitlement_ids(
    s: Session,
    namespace: str,
    subject_keys: Sequence[str],
    customer_ids: Sequence[str],
    feature_keys: Sequence[str],
    customers_only: bool = False,
) -> list[str] | None:
    """The entitlements (deleted ones too) a grant filter on owners or features means; None: no filter."""
    if not (subject_keys or customer_ids or feature_keys or customers_only):
        return None
    f = owner_filters(s, namespace, subject_keys, customer_ids, feature_keys, include_deleted=True)
    f = replace(f, customers_only=customers_only)
    return [e.id for e in EntitlementRepository(s, lock_rows=False).search(namespace, f, limit=100_000, offset=0)]


def _require_metered(ent: Entitlement | None, id_or_feature_key: str, owner: OwnerRef) -> None:
    if ent is None or ent.deleted_at is not None:
        raise EntitlementNotFound(id_or_feature_key, owner)
    if ent.type is not EntitlementType.METERED:
        raise NotMetered(ent.id, "grants")


__all__ = ["Expiration", "ExpirationDuration", "GrantInput", "GrantService"]
