"""All SQL of the entitlement state: one repository per aggregate, each bound to one transaction's Session.

Repositories return domain values (entitlements.domain), never ORM rows, so nothing outside this package
can lazily load or mutate state behind a transaction's back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, delete, false, func, or_, select, update
from sqlalchemy.orm import Session

from entitlements.db.models import (
    CustomerRow,
    CustomerSubjectRow,
    EntitlementRow,
    FeatureRow,
    GrantRow,
    ResetRow,
    SnapshotRow,
)
from entitlements.domain import (
    Customer,
    Entitlement,
    EntitlementType,
    Expiration,
    ExpirationDuration,
    Feature,
    Grant,
    Reset,
    StoredSnapshot,
    UsagePeriod,
)


class FeatureRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def add(self, f: Feature) -> None:
        self.s.add(
            FeatureRow(
                id=f.id,
                namespace=f.namespace,
                key=f.key,
                name=f.name,
                meter_slug=f.meter_slug,
                meter_group_by_filters=dict(f.meter_group_by_filters),
                metadata_=dict(f.metadata),
                created_at=f.created_at,
                updated_at=f.updated_at,
                archived_at=f.archived_at,
            )
        )
        self.s.flush()

    def by_ids(self, namespace: str, ids: Sequence[str]) -> dict[str, Feature]:
        if not ids:
            return {}
        q = select(FeatureRow).where(FeatureRow.namespace == namespace, FeatureRow.id.in_(list(set(ids))))
        return {r.id: _feature(r) for r in self.s.scalars(q)}

    def get(self, namespace: str, id_or_key: str) -> Feature | None:
        """By id, else the active feature with that key."""
        row = self.s.scalars(select(FeatureRow).where(FeatureRow.namespace == namespace, FeatureRow.id == id_or_key))
        found = row.first()
        return self.active_by_key(namespace, id_or_key) if found is None else _feature(found)

    def active_by_key(self, namespace: str, key: str) -> Feature | None:
        found = self.s.scalars(
            select(FeatureRow).where(
                FeatureRow.namespace == namespace, FeatureRow.key == key, FeatureRow.archived_at.is_(None)
            )
        ).first()
        return None if found is None else _feature(found)

    def search(
        self, namespace: str, *, include_archived: bool, meter_slugs: Sequence[str] = (), limit: int, offset: int
    ) -> list[Feature]:
        q = _matching_features(namespace, include_archived, meter_slugs)
        q = q.order_by(FeatureRow.created_at, FeatureRow.id).limit(limit).offset(offset)
        return [_feature(r) for r in self.s.scalars(q)]

    def count(self, namespace: str, *, include_archived: bool, meter_slugs: Sequence[str] = ()) -> int:
        return _count(self.s, _matching_features(namespace, include_archived, meter_slugs))

    def archive(self, namespace: str, feature_id: str, at: datetime) -> None:
        self.s.execute(
            update(FeatureRow)
            .where(FeatureRow.namespace == namespace, FeatureRow.id == feature_id, FeatureRow.archived_at.is_(None))
            .values(archived_at=at, updated_at=at)
        )

    def active_keys_using_meter(self, namespace: str, meter_slug: str) -> list[str]:
        q = select(FeatureRow.key).where(
            FeatureRow.namespace == namespace, FeatureRow.meter_slug == meter_slug, FeatureRow.archived_at.is_(None)
        )
        return sorted(self.s.scalars(q))


def _count(s: Session, q: Select[Any]) -> int:
    return int(s.scalar(select(func.count()).select_from(q.subquery())) or 0)


def _matching_features(namespace: str, include_archived: bool, meter_slugs: Sequence[str]) -> Select[FeatureRow]:
    q = select(FeatureRow).where(FeatureRow.namespace == namespace)
    if not include_archived:
        q = q.where(FeatureRow.archived_at.is_(None))
    if meter_slugs:
        q = q.where(FeatureRow.meter_slug.in_(list(meter_slugs)))
    return q


def _feature(r: FeatureRow) -> Feature:
    return Feature(
        id=r.id,
        namespace=r.namespace,
        key=r.key,
        name=r.name,
        meter_slug=r.meter_slug,
        meter_group_by_filters=dict(r.meter_group_by_filters or {}),
        metadata=dict(r.metadata_ or {}),
        created_at=r.created_at,
        updated_at=r.updated_at,
        archived_at=r.archived_at,
    )


class EntitlementRepository:
    def __init__(self, session: Session, *, lock_rows: bool) -> None:
        self.s = session
        self.lock_rows = lock_rows

    def add(self, e: Entitlement) -> None:
        self.s.add(
            EntitlementRow(
                id=e.id,
                namespace=e.namespace,
                subject_key=e.subject_key,
                feature_id=e.feature_id,
                feature_key=e.feature_key,
                type=e.type.value,
                config=e.config,
                usage_period_interval=e.usage_period.interval if e.usage_period else None,
                usage_period_anchor=e.usage_period.anchor if e.usage_period else None,
                measure_usage_from=e.measure_usage_from,
                is_soft_limit=e.is_soft_limit,
                issue_after_reset=e.issue_after_reset,
                issue_after_reset_priority=e.issue_after_reset_priority,
                preserve_overage_at_reset=e.preserve_overage_at_reset,
                metadata_=dict(e.metadata),
                version=e.version,
                created_at=e.created_at,
                updated_at=e.updated_at,
                deleted_at=e.deleted_at,
                customer_id=e.customer_id,
            )
        )
        self.s.flush()

    def get(self, namespace: str, entitlement_id: str, *, for_update: bool = False) -> Entitlement | None:
        """By id. `for_update` takes the per-entitlement lock (PostgreSQL row lock) until the transaction ends."""
        q = select(EntitlementRow).where(EntitlementRow.namespace == namespace, EntitlementRow.id == entitlement_id)
        if for_update and self.lock_rows:
            q = q.with_for_update()
        row = self.s.scalars(q).first()
        return None if row is None else _entitlement(row)

    def active_for(
        self, namespace: str, owner_key: str, feature_id: str, customer_id: str | None = None
    ) -> Entitlement | None:
        """The owner's active entitlement of the feature: a subject's (customer_id None) or a customer's."""
        q = _owned(namespace, owner_key, customer_id).where(
            EntitlementRow.feature_id == feature_id, EntitlementRow.deleted_at.is_(None)
        )
        row = self.s.scalars(q).first()
        return None if row is None else _entitlement(row)

    def active_for_feature_key(
        self, namespace: str, owner_key: str, feature_key: str, customer_id: str | None = None
    ) -> Entitlement | None:
        q = _owned(namespace, owner_key, customer_id).where(
            EntitlementRow.feature_key == feature_key, EntitlementRow.deleted_at.is_(None)
        )
        row = self.s.scalars(q).first()
        return None if row is None else _entitlement(row)

    def active_of_subject(self, namespace: str, subject_key: str) -> list[Entitlement]:
        """A subject's own active entitlements (not a customer's), for a customer to adopt."""
        q = _owned(namespace, subject_key, None).where(EntitlementRow.deleted_at.is_(None))
        return [_entitlement(r) for r in self.s.scalars(q.order_by(EntitlementRow.created_at, EntitlementRow.id))]

    def adopt(self, entitlement_id: str, customer_id: str, at: datetime) -> None:
        """A subject's entitlement becomes its new customer's (its usage: the customer's subjects)."""
        self.s.execute(
            update(EntitlementRow)
            .where(EntitlementRow.id == entitlement_id)
            .values(subject_key=customer_id, customer_id=customer_id, version=EntitlementRow.version + 1, updated_at=at)
        )

    def of_customer(self, customer_id: str) -> list[str]:
        """Ids of every entitlement a customer owns (deleted ones too)."""
        return list(self.s.scalars(select(EntitlementRow.id).where(EntitlementRow.customer_id == customer_id)))

    def search(
        self,
        namespace: str,
        f: EntitlementFilters,
        *,
        limit: int,
        offset: int,
        order_by: str = "createdAt",
        descending: bool = False,
    ) -> list[Entitlement]:
        column = EntitlementRow.updated_at if order_by == "updatedAt" else EntitlementRow.created_at
        q = _matching_entitlements(namespace, f)
        q = q.order_by(column.desc() if descending else column, EntitlementRow.id).limit(limit).offset(offset)
        return [_entitlement(r) for r in self.s.scalars(q)]

    def count(self, namespace: str, f: EntitlementFilters) -> int:
        return _count(self.s, _matching_entitlements(namespace, f))

    def mark_deleted(self, namespace: str, entitlement_id: str, at: datetime) -> None:
        self.s.execute(
            update(EntitlementRow)
            .where(EntitlementRow.namespace == namespace, EntitlementRow.id == entitlement_id)
            .values(deleted_at=at, updated_at=at, version=EntitlementRow.version + 1)
        )

    def bump_version(self, entitlement_id: str, at: datetime) -> None:
        self.s.execute(
            update(EntitlementRow)
            .where(EntitlementRow.id == entitlement_id)
            .values(version=EntitlementRow.version + 1, updated_at=at)
        )


def _owned(namespace: str, owner_key: str, customer_id: str | None) -> Select[EntitlementRow]:
    q = select(EntitlementRow).where(EntitlementRow.namespace == namespace, EntitlementRow.subject_key == owner_key)
    if customer_id is None:
        return q.where(EntitlementRow.customer_id.is_(None))
    return q.where(EntitlementRow.customer_id == customer_id)


@dataclass(frozen=True, slots=True)
class EntitlementFilters:
    """Owned by one of `subject_keys` (subjects' own entitlements) or of `customer_ids`; of one of `feature_keys`;
    an empty owner filter (both empty) means every owner unless `owners_given` (then: none)."""

    subject_keys: Sequence[str] = ()
    customer_ids: Sequence[str] = ()
    feature_keys: Sequence[str] = ()
    include_deleted: bool = False
    owners_given: bool = False
    customers_only: bool = False
    types: Sequence[str] = ()


def _matching_entitlements(namespace: str, f: EntitlementFilters) -> Select[EntitlementRow]:
    q = select(EntitlementRow).where(EntitlementRow.namespace == namespace)
    owners = []
    if f.subject_keys:
        owners.append(and_(EntitlementRow.customer_id.is_(None), EntitlementRow.subject_key.in_(list(f.subject_keys))))
    if f.customer_ids:
        owners.append(EntitlementRow.customer_id.in_(list(f.customer_ids)))
    if owners:
        q = q.where(or_(*owners))
    elif f.owners_given:
        q = q.where(false())
    if f.customers_only:
        q = q.where(EntitlementRow.customer_id.is_not(None))
    if f.feature_keys:
        q = q.where(EntitlementRow.feature_key.in_(list(f.feature_keys)))
    if f.types:
        q = q.where(EntitlementRow.type.in_(list(f.types)))
    if not f.include_deleted:
        q = q.where(EntitlementRow.deleted_at.is_(None))
    return q


def _entitlement(r: EntitlementRow) -> Entitlement:
    period = (
        UsagePeriod(r.usage_period_interval, r.usage_period_anchor)
        if r.usage_period_interval is not None and r.usage_period_anchor is not None
        else None
    )
    return Entitlement(
        id=r.id,
        namespace=r.namespace,
        subject_key=r.subject_key,
        feature_id=r.feature_id,
        feature_key=r.feature_key,
        type=EntitlementType(r.type),
        created_at=r.created_at,
        updated_at=r.updated_at,
        metadata=dict(r.metadata_ or {}),
        deleted_at=r.deleted_at,
        config=r.config,
        usage_period=period,
        measure_usage_from=r.measure_usage_from,
        is_soft_limit=r.is_soft_limit,
        issue_after_reset=r.issue_after_reset,
        issue_after_reset_priority=r.issue_after_reset_priority,
        preserve_overage_at_reset=r.preserve_overage_at_reset,
        version=r.version,
        customer_id=r.customer_id,
    )


class CustomerRepository:
    """Customers and their usage attribution; `claim` relies on customer_subjects' primary key."""

    def __init__(self, session: Session) -> None:
        self.s = session

    def add(self, c: Customer) -> None:
        self.s.add(
            CustomerRow(
                id=c.id,
                namespace=c.namespace,
                key=c.key,
                name=c.name,
                description=c.description,
                metadata_=dict(c.metadata),
                primary_email=c.primary_email,
                currency=c.currency,
                subject_keys=list(c.subject_keys),
                created_at=c.created_at,
                updated_at=c.updated_at,
                deleted_at=c.deleted_at,
            )
        )
        self.s.flush()
        self.claim(c.namespace, c.id, c.subject_keys)

    def replace(self, c: Customer) -> None:
        """Store `c`'s fields and make its subject rows exactly `c.subject_keys`."""
        self.s.execute(
            update(CustomerRow)
            .where(CustomerRow.id == c.id)
            .values(
                key=c.key,
                name=c.name,
                description=c.description,
                metadata_=dict(c.metadata),
                primary_email=c.primary_email,
                currency=c.currency,
                subject_keys=list(c.subject_keys),
                updated_at=c.updated_at,
            )
        )
        self.s.execute(
            delete(CustomerSubjectRow).where(
                CustomerSubjectRow.customer_id == c.id, CustomerSubjectRow.subject_key.not_in(list(c.subject_keys))
            )
        )
        held = set(self.s.scalars(select(CustomerSubjectRow.subject_key).where(CustomerSubjectRow.customer_id == c.id)))
        self.claim(c.namespace, c.id, [k for k in c.subject_keys if k not in held])

    def claim(self, namespace: str, customer_id: str, subject_keys: Sequence[str]) -> None:
        """Raises IntegrityError if another customer holds one of them (the primary key decides races)."""
        for key in subject_keys:
            self.s.add(CustomerSubjectRow(namespace=namespace, subject_key=key, customer_id=customer_id))
        self.s.flush()

    def mark_deleted(self, customer_id: str, at: datetime) -> None:
        self.s.execute(update(CustomerRow).where(CustomerRow.id == customer_id).values(deleted_at=at, updated_at=at))
        self.s.execute(delete(CustomerSubjectRow).where(CustomerSubjectRow.customer_id == customer_id))

    def get(self, namespace: str, id_or_key: str, *, include_deleted: bool = False) -> Customer | None:
        """By id, else the active customer with that key (OpenMeter's customerIdOrKey)."""
        q = select(CustomerRow).where(CustomerRow.namespace == namespace, CustomerRow.id == id_or_key)
        row = self.s.scalars(q).first()
        if row is None or (row.deleted_at is not None and not include_deleted):
            q = select(CustomerRow).where(
                CustomerRow.namespace == namespace, CustomerRow.key == id_or_key, CustomerRow.deleted_at.is_(None)
            )
            row = self.s.scalars(q).first() or (row if include_deleted else None)
        return None if row is None else _customer(row)

    def active_by_key(self, namespace: str, key: str) -> Customer | None:
        q = select(CustomerRow).where(
            CustomerRow.namespace == namespace, CustomerRow.key == key, CustomerRow.deleted_at.is_(None)
        )
        row = self.s.scalars(q).first()
        return None if row is None else _customer(row)

    def of_subject(self, namespace: str, subject_key: str) -> Customer | None:
        """The active customer the subject belongs to, if any."""
        q = (
            select(CustomerRow)
            .join(CustomerSubjectRow, CustomerSubjectRow.customer_id == CustomerRow.id)
            .where(CustomerSubjectRow.namespace == namespace, CustomerSubjectRow.subject_key == subject_key)
        )
        row = self.s.scalars(q).first()
        return None if row is None else _customer(row)

    def holders(self, namespace: str, subject_keys: Sequence[str]) -> dict[str, str]:
        """subject key -> id of the active customer holding it, for those held."""
        if not subject_keys:
            return {}
        q = select(CustomerSubjectRow.subject_key, CustomerSubjectRow.customer_id).where(
            CustomerSubjectRow.namespace == namespace, CustomerSubjectRow.subject_key.in_(list(subject_keys))
        )
        return {row[0]: row[1] for row in self.s.execute(q)}

    def by_ids(self, namespace: str, ids: Sequence[str]) -> dict[str, Customer]:
        if not ids:
            return {}
        q = select(CustomerRow).where(CustomerRow.namespace == namespace, CustomerRow.id.in_(list(set(ids))))
        return {r.id: _customer(r) for r in self.s.scalars(q)}

    def search(
        self, namespace: str, filters: CustomerFilters, *, order_by: str, descending: bool, limit: int, offset: int
    ) -> list[Customer]:
        column = {"id": CustomerRow.id, "name": CustomerRow.name, "createdAt": CustomerRow.created_at}[order_by]
        q = _matching_customers(namespace, filters)
        q = q.order_by(column.desc() if descending else column, CustomerRow.id).limit(limit).offset(offset)
        return [_customer(r) for r in self.s.scalars(q)]

    def count(self, namespace: str, filters: CustomerFilters) -> int:
        return _count(self.s, _matching_customers(namespace, filters))


@dataclass(frozen=True, slots=True)
class CustomerFilters:
    """OpenMeter's list filters: key and primaryEmail exact, name a case-insensitive substring, subject held."""

    key: str | None = None
    name: str | None = None
    primary_email: str | None = None
    subject: str | None = None
    include_deleted: bool = False


def _matching_customers(namespace: str, f: CustomerFilters) -> Select[CustomerRow]:
    q = select(CustomerRow).where(CustomerRow.namespace == namespace)
    if f.key is not None:
        q = q.where(CustomerRow.key == f.key)
    if f.name is not None:
        q = q.where(func.lower(CustomerRow.name).contains(f.name.lower(), autoescape=True))
    if f.primary_email is not None:
        q = q.where(CustomerRow.primary_email == f.primary_email)
    if f.subject is not None:
        held = select(CustomerSubjectRow.customer_id).where(
            CustomerSubjectRow.namespace == namespace, CustomerSubjectRow.subject_key == f.subject
        )
        q = q.where(CustomerRow.id.in_(held))
    if not f.include_deleted:
        q = q.where(CustomerRow.deleted_at.is_(None))
    return q


def _customer(r: CustomerRow) -> Customer:
    return Customer(
        id=r.id,
        namespace=r.namespace,
        name=r.name,
        created_at=r.created_at,
        updated_at=r.updated_at,
        key=r.key,
        description=r.description,
        metadata=dict(r.metadata_ or {}),
        primary_email=r.primary_email,
        currency=r.currency,
        subject_keys=tuple(r.subject_keys or ()),
        deleted_at=r.deleted_at,
    )


class GrantRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def add(self, g: Grant) -> None:
        self.s.add(
            GrantRow(
                id=g.id,
                namespace=g.namespace,
                entitlement_id=g.entitlement_id,
                amount=g.amount,
                priority=g.priority,
                effective_at=g.effective_at,
                expiration_duration=None if g.expiration is None else g.expiration.duration.value,
                expiration_count=None if g.expiration is None else g.expiration.count,
                expires_at=g.expires_at,
                min_rollover_amount=g.min_rollover_amount,
                max_rollover_amount=g.max_rollover_amount,
                recurrence_interval=g.recurrence.interval if g.recurrence else None,
                recurrence_anchor=g.recurrence.anchor if g.recurrence else None,
                metadata_=dict(g.metadata),
                created_at=g.created_at,
                updated_at=g.updated_at,
                voided_at=g.voided_at,
            )
        )
        self.s.flush()

    def get(self, namespace: str, grant_id: str) -> Grant | None:
        row = self.s.scalars(select(GrantRow).where(GrantRow.namespace == namespace, GrantRow.id == grant_id)).first()
        return None if row is None else _grant(row)

    def for_entitlement(self, entitlement_id: str) -> list[Grant]:
        q = select(GrantRow).where(GrantRow.entitlement_id == entitlement_id).order_by(GrantRow.created_at, GrantRow.id)
        return [_grant(r) for r in self.s.scalars(q)]

    def for_entitlements(self, entitlement_ids: Sequence[str]) -> dict[str, list[Grant]]:
        """Each entitlement's grants (as `for_entitlement` orders them), in one query; none: absent."""
        out: dict[str, list[Grant]] = {}
        if not entitlement_ids:
            return out
        q = (
            select(GrantRow)
            .where(GrantRow.entitlement_id.in_(list(entitlement_ids)))
            .order_by(GrantRow.created_at, GrantRow.id)
        )
        for r in self.s.scalars(q):
            out.setdefault(r.entitlement_id, []).append(_grant(r))
        return out

    def search(
        self, namespace: str, *, include_voided: bool, entitlement_ids: Sequence[str] | None, limit: int, offset: int
    ) -> list[Grant]:
        q = _matching_grants(namespace, include_voided, entitlement_ids)
        q = q.order_by(GrantRow.created_at, GrantRow.id).limit(limit).offset(offset)
        return [_grant(r) for r in self.s.scalars(q)]

    def count(self, namespace: str, *, include_voided: bool, entitlement_ids: Sequence[str] | None) -> int:
        return _count(self.s, _matching_grants(namespace, include_voided, entitlement_ids))

    def void(self, grant_id: str, at: datetime) -> None:
        self.s.execute(update(GrantRow).where(GrantRow.id == grant_id).values(voided_at=at, updated_at=at))


def _matching_grants(namespace: str, include_voided: bool, entitlement_ids: Sequence[str] | None) -> Select[GrantRow]:
    q = select(GrantRow).where(GrantRow.namespace == namespace)
    if not include_voided:
        q = q.where(GrantRow.voided_at.is_(None))
    if entitlement_ids is not None:
        q = q.where(GrantRow.entitlement_id.in_(list(entitlement_ids)))
    return q


def _grant(r: GrantRow) -> Grant:
    recurrence = (
        UsagePeriod(r.recurrence_interval, r.recurrence_anchor)
        if r.recurrence_interval is not None and r.recurrence_anchor is not None
        else None
    )
    return Grant(
        id=r.id,
        namespace=r.namespace,
        entitlement_id=r.entitlement_id,
        amount=r.amount,
        priority=r.priority,
        effective_at=r.effective_at,
        expiration=(
            None
            if r.expiration_duration is None or r.expiration_count is None
            else Expiration(ExpirationDuration(r.expiration_duration), r.expiration_count)
        ),
        expires_at=r.expires_at,
        created_at=r.created_at,
        updated_at=r.updated_at,
        min_rollover_amount=r.min_rollover_amount,
        max_rollover_amount=r.max_rollover_amount,
        recurrence=recurrence,
        metadata=dict(r.metadata_ or {}),
        voided_at=r.voided_at,
    )


class ResetRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def add(self, r: Reset) -> None:
        self.s.add(
            ResetRow(
                id=r.id,
                entitlement_id=r.entitlement_id,
                effective_at=r.effective_at,
                retain_anchor=r.retain_anchor,
                preserve_overage=r.preserve_overage,
                created_at=r.created_at,
            )
        )
        self.s.flush()

    def for_entitlement(self, entitlement_id: str) -> list[Reset]:
        return self.for_entitlements([entitlement_id]).get(entitlement_id, [])

    def for_entitlements(self, entitlement_ids: Sequence[str]) -> dict[str, list[Reset]]:
        """Each entitlement's resets in effective order, in one query (entitlements without any are absent)."""
        out: dict[str, list[Reset]] = {}
        if not entitlement_ids:
            return out
        q = (
            select(ResetRow)
            .where(ResetRow.entitlement_id.in_(list(entitlement_ids)))
            .order_by(ResetRow.entitlement_id, ResetRow.effective_at)
        )
        for r in self.s.scalars(q):
            out.setdefault(r.entitlement_id, []).append(
                Reset(
                    id=r.id,
                    entitlement_id=r.entitlement_id,
                    effective_at=r.effective_at,
                    retain_anchor=r.retain_anchor,
                    preserve_overage=r.preserve_overage,
                    created_at=r.created_at,
                )
            )
        return out


class SnapshotRepository:
    """Engine snapshots: a cache. Invalidation deletes rows; a read that finds none recomputes."""

    def __init__(self, session: Session) -> None:
        self.s = session

    def latest_at_or_before(self, entitlement_id: str, at: datetime, *, limit: int) -> list[StoredSnapshot]:
        """The newest snapshots with snapshot.at <= at, newest first."""
        q = (
            select(SnapshotRow)
            .where(SnapshotRow.entitlement_id == entitlement_id, SnapshotRow.at <= at)
            .order_by(SnapshotRow.at.desc())
            .limit(limit)
        )
        return [
            StoredSnapshot(
                entitlement_id=r.entitlement_id, at=r.at, created_at=r.created_at, version=r.version, state=r.state
            )
            for r in self.s.scalars(q)
        ]

    def put(self, snapshots: Sequence[StoredSnapshot]) -> None:
        for snap in snapshots:
            self.s.merge(
                SnapshotRow(
                    entitlement_id=snap.entitlement_id,
                    at=snap.at,
                    created_at=snap.created_at,
                    version=snap.version,
                    state=snap.state,
                )
            )
        self.s.flush()

    def delete_from(self, entitlement_id: str, at: datetime) -> int:
        """Drop snapshots at or after `at` (a change effective at `at` makes them wrong)."""
        result = self.s.execute(
            delete(SnapshotRow).where(SnapshotRow.entitlement_id == entitlement_id, SnapshotRow.at >= at)
        )
        return int(getattr(result, "rowcount", 0) or 0)

    def delete_all(self, entitlement_id: str) -> None:
        self.s.execute(delete(SnapshotRow).where(SnapshotRow.entitlement_id == entitlement_id))

    def count(self, entitlement_id: str) -> int:
        return _count(self.s, select(SnapshotRow.at).where(SnapshotRow.entitlement_id == entitlement_id))
