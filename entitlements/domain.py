"""Entitlement state: features, entitlements, grants and resets as values, and the domain errors.

These are what the repositories load and store and what the service hands to the pure engine
(entitlements.engine). Amounts are Decimal; instants are aware UTC datetimes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from common.errors import Conflict, InvalidInput, NotFound

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id() -> str:
    """A ULID (26 Crockford base32 characters: 48-bit millisecond time, 80 random bits), like OpenMeter's ids."""
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


class EntitlementType(StrEnum):
    BOOLEAN = "boolean"
    STATIC = "static"
    METERED = "metered"


class ExpirationDuration(StrEnum):
    HOUR = "HOUR"
    DAY = "DAY"
    WEEK = "WEEK"
    MONTH = "MONTH"
    YEAR = "YEAR"


@dataclass(frozen=True, slots=True)
class Feature:
    id: str
    namespace: str
    key: str
    name: str
    meter_slug: str | None
    meter_group_by_filters: dict[str, str]
    metadata: dict[str, str]
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class UsagePeriod:
    """`interval` is DAY, WEEK, MONTH, YEAR or an ISO 8601 duration (P1M, PT6H); boundaries are anchor + k*interval."""

    interval: str
    anchor: datetime


@dataclass(frozen=True, slots=True)
class Customer:
    """A customer: its usage is the usage of its subjects (`subject_keys`, each in at most one active customer)."""

    id: str
    namespace: str
    name: str
    created_at: datetime
    updated_at: datetime
    key: str | None = None
    description: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    primary_email: str | None = None
    currency: str | None = None
    subject_keys: tuple[str, ...] = ()
    deleted_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class CustomerRef:
    """A customer as a request names it: its id or its key (OpenMeter's customerIdOrKey)."""

    id_or_key: str


#: Who a request's entitlement belongs to, as the request names it: a subject key (the v1 subject routes)
#: or a customer (v2 and the customer routes). A subject that belongs to a customer stands for that customer.
OwnerRef = str | CustomerRef


@dataclass(frozen=True, slots=True)
class Owner:
    """Who an entitlement belongs to, resolved: a subject, or a customer with its current subjects.

    `key` is what entitlements store as their owner (`Entitlement.subject_key`): the subject key, or the
    customer's id. `subjects` are the subject keys whose usage counts (usage attribution).
    """

    key: str
    customer: Customer | None
    subjects: tuple[str, ...]

    @property
    def customer_id(self) -> str | None:
        return None if self.customer is None else self.customer.id

    @property
    def label(self) -> str:
        return f"subject {self.key!r}" if self.customer is None else f"customer {self.customer.key or self.key!r}"

    @staticmethod
    def of_subject(subject_key: str) -> Owner:
        return Owner(subject_key, None, (subject_key,))


@dataclass(frozen=True, slots=True)
class Entitlement:
    """`subject_key` is the owner: the subject's key, or the customer's id when `customer_id` is set."""

    id: str
    namespace: str
    subject_key: str
    feature_id: str
    feature_key: str
    type: EntitlementType
    created_at: datetime
    updated_at: datetime
    metadata: dict[str, str] = field(default_factory=dict)
    deleted_at: datetime | None = None
    # static
    config: str | None = None
    # metered
    usage_period: UsagePeriod | None = None
    measure_usage_from: datetime | None = None
    is_soft_limit: bool = False
    issue_after_reset: Decimal | None = None
    issue_after_reset_priority: int = 1
    preserve_overage_at_reset: bool = False
    # bumped by every change that can move a balance (grant, void, reset, the customer's subjects)
    version: int = 0
    customer_id: str | None = None

    @property
    def owner_ref(self) -> OwnerRef:
        """How to name this entitlement's owner to the services (a subject key, or the customer)."""
        return self.subject_key if self.customer_id is None else CustomerRef(self.customer_id)


@dataclass(frozen=True, slots=True)
class Expiration:
    duration: ExpirationDuration
    count: int


@dataclass(frozen=True, slots=True)
class Grant:
    id: str
    namespace: str
    entitlement_id: str
    amount: Decimal
    priority: int
    effective_at: datetime
    expiration: Expiration | None  # None: never expires (the v2 API makes expiration optional)
    expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    min_rollover_amount: Decimal = Decimal(0)
    max_rollover_amount: Decimal = Decimal(0)
    recurrence: UsagePeriod | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    voided_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Reset:
    """A manual usage reset at `effective_at`; with `retain_anchor` false the period anchor moves to it."""

    id: str
    entitlement_id: str
    effective_at: datetime
    retain_anchor: bool
    preserve_overage: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class StoredSnapshot:
    """A cached engine state of one entitlement at instant `at`.

    `created_at` is real wall time (never the test clock), comparable with event storage times: a snapshot is
    stale when an event older than `at` was stored after `created_at`. `version` is the entitlement's version
    the snapshot was computed from; `state` is the engine's snapshot encoded as JSON.
    """

    entitlement_id: str
    at: datetime
    created_at: datetime
    version: int
    state: dict[str, Any]


# ---- errors: each subclasses a category of common.errors, so common.http decides the status ----


class FeatureNotFound(NotFound):
    def __init__(self, feature: str) -> None:
        super().__init__(f"feature {feature!r} not found", feature=feature)


class FeatureKeyTaken(Conflict):
    def __init__(self, key: str, existing_id: str) -> None:
        super().__init__(
            f"a feature with key {key!r} already exists ({existing_id}); archive it first",
            key=key,
            conflictingId=existing_id,
        )


class FeatureArchived(InvalidInput):
    def __init__(self, feature: str) -> None:
        super().__init__(f"feature {feature!r} is archived: no new entitlements can use it", feature=feature)


class MeterNotFound(InvalidInput):
    def __init__(self, slug: str) -> None:
        super().__init__(f"meter {slug!r} does not exist", meterSlug=slug)


def _owner_text(owner: OwnerRef | Owner | None) -> str:
    if owner is None:
        return ""
    if isinstance(owner, Owner):
        return owner.label
    if isinstance(owner, CustomerRef):
        return f"customer {owner.id_or_key!r}"
    return f"subject {owner!r}"


class EntitlementNotFound(NotFound):
    def __init__(self, entitlement: str, owner: OwnerRef | Owner | None = None) -> None:
        where = f" for {_owner_text(owner)}" if owner else ""
        super().__init__(f"entitlement {entitlement!r} not found{where}", entitlement=entitlement)


class EntitlementExists(Conflict):
    def __init__(self, owner: OwnerRef | Owner, feature_key: str, existing_id: str) -> None:
        super().__init__(
            f"{_owner_text(owner)} already has an active entitlement for feature {feature_key!r}: {existing_id}",
            conflictingEntityId=existing_id,
        )
        self.existing_id = existing_id


class CustomerNotFound(NotFound):
    def __init__(self, id_or_key: str) -> None:
        super().__init__(f"customer {id_or_key!r} not found", customer=id_or_key)


class CustomerKeyTaken(Conflict):
    def __init__(self, key: str, existing_id: str) -> None:
        super().__init__(
            f"a customer with key {key!r} already exists ({existing_id})", key=key, conflictingEntityId=existing_id
        )


class SubjectTaken(Conflict):
    """A subject belongs to at most one active customer."""

    def __init__(self, subject_key: str, customer_id: str, customer_key: str | None) -> None:
        name = f"{customer_id} (key {customer_key!r})" if customer_key else customer_id
        super().__init__(
            f"subject {subject_key!r} already belongs to customer {name}: remove it there first",
            subjectKey=subject_key,
            conflictingEntityId=customer_id,
        )


class NotMetered(InvalidInput):
    def __init__(self, entitlement_id: str, what: str) -> None:
        super().__init__(f"entitlement {entitlement_id} is not metered: it has no {what}", entitlement=entitlement_id)


class GrantNotFound(NotFound):
    def __init__(self, grant_id: str) -> None:
        super().__init__(f"grant {grant_id!r} not found", grant=grant_id)


class GrantAlreadyVoided(Conflict):
    def __init__(self, grant_id: str) -> None:
        super().__init__(f"grant {grant_id!r} is already voided", grant=grant_id)
