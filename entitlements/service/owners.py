"""Who an entitlement belongs to: resolving a request's subject or customer to its owner, in a transaction.

A subject that belongs to an active customer (its key or one of its subject keys) stands for that customer:
the v1 subject routes and the customer routes see the same entitlements (OpenMeter maps a subject to its
customer the same way). A subject in no customer owns its entitlements itself, as before customers existed.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from entitlements.db.repositories import CustomerRepository
from entitlements.domain import Customer, CustomerNotFound, CustomerRef, Entitlement, Owner, OwnerRef


def attribution(customer: Customer) -> tuple[str, ...]:
    """The subject keys whose usage is the customer's: its key (OpenMeter attributes by key too), then its subjects."""
    values = ([customer.key] if customer.key is not None else []) + list(customer.subject_keys)
    return tuple(dict.fromkeys(values))


def customer_owner(customer: Customer) -> Owner:
    return Owner(customer.id, customer, attribution(customer))


def resolve_owner(s: Session, namespace: str, ref: OwnerRef) -> Owner:
    customers = CustomerRepository(s)
    if isinstance(ref, CustomerRef):
        found = customers.get(namespace, ref.id_or_key)
        if found is None:
            raise CustomerNotFound(ref.id_or_key)
        return customer_owner(found)
    holder = customers.of_subject(namespace, ref)
    return Owner.of_subject(ref) if holder is None else customer_owner(holder)


def owner_of(s: Session, ent: Entitlement) -> Owner:
    """The owner of a stored entitlement, with the subjects whose usage it counts now."""
    if ent.customer_id is None:
        return Owner.of_subject(ent.subject_key)
    found = CustomerRepository(s).get(ent.namespace, ent.customer_id, include_deleted=True)
    if found is None:  # cannot happen (customers are never removed): count nothing rather than fail
        return Owner(ent.subject_key, None, ())
    return customer_owner(found)


def owns(owner: Owner, ent: Entitlement) -> bool:
    return ent.subject_key == owner.key and ent.customer_id == owner.customer_id
