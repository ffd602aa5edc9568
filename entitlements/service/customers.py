"""Customers: a name, a key, and the subjects whose usage is theirs (OpenMeter's usage attribution).

A subject belongs to at most one active customer. The customer_subjects table's primary key decides races:
of two customers claiming one subject at once, one commits and the other gets 409 naming the winner.

When a subject joins a customer, the subject's own active entitlements become the customer's (they now
count the usage of all the customer's subjects). A change to a customer's subjects counts from the
beginning: a customer's usage is always the usage of its current subjects over the whole history (as
OpenMeter's queries attribute it), so the stored balance snapshots of its entitlements are dropped and
every balance is recomputed on its next read.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from common.errors import Conflict, InvalidInput
from entitlements import quotas
from entitlements.db.repositories import (
    CustomerFilters,
    CustomerRepository,
    EntitlementFilters,
    EntitlementRepository,
    SnapshotRepository,
)
from entitlements.domain import Customer, CustomerKeyTaken, CustomerNotFound, SubjectTaken, new_id
from entitlements.service.deps import Deps
from entitlements.service.owners import attribution

log = structlog.get_logger(__name__)

MAX_PAGE = 1000
ORDER_BY = ("id", "name", "createdAt")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")


@dataclass(frozen=True, slots=True)
class CustomerInput:
    name: str
    key: str | None = None
    description: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    subject_keys: Sequence[str] = ()
    primary_email: str | None = None
    currency: str | None = None


class CustomerHasEntitlements(InvalidInput):
    def __init__(self, customer_id: str, count: int) -> None:
        super().__init__(
            f"customer {customer_id} has {count} active entitlement(s): delete them before deleting the customer",
            customer=customer_id,
        )


class CustomerService:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    async def create(self, namespace: str, spec: CustomerInput) -> Customer:
        subjects = self._validate(spec)
        now = self.deps.clock.now()
        customer = Customer(id=new_id(), namespace=namespace, created_at=now, updated_at=now, **_fields(spec, subjects))

        def tx(s: Session) -> Customer:
            quotas.check_customers(s, self.deps.quotas, namespace)
            _check_claims(s, namespace, customer)
            CustomerRepository(s).add(customer)
            _adopt(s, namespace, customer, attribution(customer))
            return customer

        created = await self._claiming(namespace, lambda: customer, tx)
        self._changed(namespace, created, attribution(created))
        log.info("customer_created", customer_id=created.id, key=created.key, subjects=len(created.subject_keys))
        return created

    async def update(self, namespace: str, id_or_key: str, spec: CustomerInput) -> Customer:
        """PUT: every field is replaced; subjects added are claimed (their entitlements adopted), removed ones freed."""
        subjects = self._validate(spec)
        now = self.deps.clock.now()
        before: list[Customer] = []

        def tx(s: Session) -> Customer:
            customers = CustomerRepository(s)
            current = customers.get(namespace, id_or_key)
            if current is None:
                raise CustomerNotFound(id_or_key)
            before.append(current)
            updated = replace(current, updated_at=now, **_fields(spec, subjects))
            _check_claims(s, namespace, updated)
            customers.replace(updated)
            old, new = attribution(current), attribution(updated)
            if old != new:
                _recount(s, current.id, now)
                _adopt(s, namespace, updated, [k for k in new if k not in old])
            return updated

        # A lost race happens at the claim, after the transaction read the customer: `before` holds it then.
        updated = await self._claiming(namespace, lambda: replace(before[-1], key=spec.key, subject_keys=subjects), tx)
        self._changed(namespace, updated, (*attribution(before[-1]), *attribution(updated)))
        log.info("customer_updated", customer_id=updated.id, key=updated.key, subjects=len(updated.subject_keys))
        return updated

    async def delete(self, namespace: str, id_or_key: str) -> None:
        """OpenMeter's rule: a customer with active entitlements cannot be deleted (400). Frees its subjects."""
        now = self.deps.clock.now()

        def tx(s: Session) -> Customer:
            customers = CustomerRepository(s)
            current = customers.get(namespace, id_or_key)
            if current is None:
                raise CustomerNotFound(id_or_key)
            active = EntitlementRepository(s, lock_rows=False).count(
                namespace, EntitlementFilters(customer_ids=(current.id,), owners_given=True)
            )
            if active:
                raise CustomerHasEntitlements(current.id, active)
            customers.mark_deleted(current.id, now)
            return current

        deleted = await self.deps.writing(tx)
        self._changed(namespace, deleted, attribution(deleted))
        log.info("customer_deleted", customer_id=deleted.id)

    async def get(self, namespace: str, id_or_key: str) -> Customer:
        """By id (deleted ones too) or by the key of an active customer."""

        def tx(s: Session) -> Customer | None:
            return CustomerRepository(s).get(namespace, id_or_key, include_deleted=True)

        found = await self.deps.reading(tx)
        if found is None:
            raise CustomerNotFound(id_or_key)
        return found

    async def attributions(self, namespace: str, customers: Sequence[str]) -> dict[str, tuple[str, tuple[str, ...]]]:
        """CustomerDirectory (common.usage) for meter queries: id or key -> (id, attributed subject keys)."""

        def tx(s: Session) -> dict[str, tuple[str, tuple[str, ...]]]:
            repo = CustomerRepository(s)
            found = {ref: repo.get(namespace, ref) for ref in dict.fromkeys(customers)}
            return {ref: (c.id, attribution(c)) for ref, c in found.items() if c is not None}

        return await self.deps.reading(tx)

    async def by_ids(self, namespace: str, ids: Sequence[str]) -> dict[str, Customer]:
        def tx(s: Session) -> dict[str, Customer]:
            return CustomerRepository(s).by_ids(namespace, ids)

        return await self.deps.reading(tx)

    async def search(
        self,
        namespace: str,
        filters: CustomerFilters,
        *,
        order_by: str = "id",
        descending: bool = False,
        limit: int = MAX_PAGE,
        offset: int = 0,
    ) -> tuple[list[Customer], int]:
        """A page of customers and the total count matching the filters."""
        if order_by not in ORDER_BY:
            raise InvalidInput(f"orderBy must be one of {', '.join(ORDER_BY)}", field="orderBy")

        def tx(s: Session) -> tuple[list[Customer], int]:
            repo = CustomerRepository(s)
            page = repo.search(
                namespace,
                filters,
                order_by=order_by,
                descending=descending,
                limit=min(limit, MAX_PAGE),
                offset=offset,
            )
            return page, repo.count(namespace, filters)

        return await self.deps.reading(tx)

    # ---- internals ----

    def _validate(self, spec: CustomerInput) -> tuple[str, ...]:
        if not spec.name or len(spec.name) > 256:
            raise InvalidInput("name is required (at most 256 characters)", field="name")
        if spec.key is not None and not 1 <= len(spec.key) <= 256:
            raise InvalidInput("key must be 1 to 256 characters", field="key")
        subjects = tuple(dict.fromkeys(spec.subject_keys))
        for k in subjects:
            if not 1 <= len(k) <= 1024:
                raise InvalidInput("subject keys must be 1 to 1024 characters", field="usageAttribution.subjectKeys")
        if len(subjects) > self.deps.quotas.subjects_per_customer:
            raise InvalidInput(
                f"at most {self.deps.quotas.subjects_per_customer} subject keys per customer "
                "(METERGATE_QUOTAS__SUBJECTS_PER_CUSTOMER)",
                field="usageAttribution.subjectKeys",
            )
        if spec.key is None and not subjects:
            raise InvalidInput("either key or usageAttribution.subjectKeys must be provided", field="key")
        if spec.primary_email is not None and (len(spec.primary_email) > 256 or not _EMAIL.match(spec.primary_email)):
            raise InvalidInput("primaryEmail must be an email address", field="primaryEmail")
        if spec.currency is not None and not _CURRENCY.match(spec.currency):
            raise InvalidInput("currency must be an ISO 4217 code such as USD", field="currency")
        return subjects

    async def _claiming(
        self, namespace: str, wanted: Callable[[], Customer], tx: Callable[[Session], Customer]
    ) -> Customer:
        """Run a claiming transaction; a lost race on a subject or key becomes the 409 naming the winner
        (`wanted`: the customer as the transaction meant to store it)."""
        try:
            result = await self.deps.writing(tx)
        except IntegrityError:
            claimed = wanted()

            def check(s: Session) -> None:
                _check_claims(s, namespace, claimed)

            await self.deps.reading(check)
            raise Conflict("a concurrent request claimed one of these subjects or this key: retry") from None
        return result

    def _changed(self, namespace: str, customer: Customer, subjects: Sequence[str]) -> None:
        for key in dict.fromkeys((customer.id, *subjects)):
            self.deps.changed(namespace, key)


def _fields(spec: CustomerInput, subjects: tuple[str, ...]) -> dict[str, Any]:
    """The customer fields a create or a PUT sets from the request."""
    return {
        "name": spec.name,
        "key": spec.key,
        "description": spec.description,
        "metadata": dict(spec.metadata),
        "primary_email": spec.primary_email,
        "currency": spec.currency,
        "subject_keys": subjects,
    }


def _check_claims(s: Session, namespace: str, customer: Customer) -> None:
    """409 when the key or one of the subjects is another active customer's."""
    customers = CustomerRepository(s)
    if customer.key is not None:
        other = customers.active_by_key(namespace, customer.key)
        if other is not None and other.id != customer.id:
            raise CustomerKeyTaken(customer.key, other.id)
    held = customers.holders(namespace, attribution(customer))
    for subject, holder in held.items():
        if holder != customer.id:
            found = customers.get(namespace, holder)
            raise SubjectTaken(subject, holder, found.key if found else None)


def _adopt(s: Session, namespace: str, customer: Customer, subjects: Sequence[str]) -> None:
    """The subjects' own active entitlements become the customer's; one per feature, else 409."""
    now = customer.updated_at
    repo = EntitlementRepository(s, lock_rows=False)
    snapshots = SnapshotRepository(s)
    for subject in subjects:
        for ent in repo.active_of_subject(namespace, subject):
            existing = repo.active_for(namespace, customer.id, ent.feature_id, customer.id)
            if existing is not None:
                raise Conflict(
                    f"subject {subject!r} has an active entitlement for feature {ent.feature_key!r} ({ent.id}) and "
                    f"the customer already has one ({existing.id}): delete one of them first",
                    conflictingEntityId=existing.id,
                )
            repo.adopt(ent.id, customer.id, now)
            snapshots.delete_all(ent.id)
            s.flush()


def _recount(s: Session, customer_id: str, at: datetime) -> None:
    """The customer's usage changed as a whole: drop its entitlements' snapshots and refuse in-flight ones."""
    repo = EntitlementRepository(s, lock_rows=False)
    snapshots = SnapshotRepository(s)
    for ent_id in repo.of_customer(customer_id):
        repo.bump_version(ent_id, at)
        snapshots.delete_all(ent_id)
