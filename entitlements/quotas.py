"""Per-namespace quotas on entitlement state, checked inside the creating transaction.

Race-safe on both databases: SQLite serialises writers (BEGIN IMMEDIATE); on PostgreSQL the check first takes
a transaction-level advisory lock on (namespace, what is counted), so two concurrent creates cannot both see
room for one more. Grants are counted under the entitlement's row lock the grant service already holds.
"""

from __future__ import annotations

from pydantic import BaseModel, Field
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from common.errors import Conflict
from entitlements.db.models import CustomerRow, EntitlementRow, FeatureRow, GrantRow


class QuotaSettings(BaseModel):
    features_per_namespace: int = Field(default=1000, ge=1, description="active (not archived) features")
    entitlements_per_subject: int = Field(default=100, ge=1, description="active entitlements of one subject")
    grants_per_entitlement: int = Field(default=1000, ge=1, description="grants (voided ones too) of one entitlement")
    meters_per_namespace: int = Field(default=200, ge=1, description="meters defined through the API")
    customers_per_namespace: int = Field(default=100_000, ge=1, description="active customers")
    subjects_per_customer: int = Field(default=1000, ge=1, description="subject keys of one customer")


class QuotaExceeded(Conflict):
    def __init__(self, what: str, limit: int, setting: str) -> None:
        super().__init__(
            f"quota reached: at most {limit} {what} (METERGATE_QUOTAS__{setting.upper()})", quota=setting, limit=limit
        )


def _serialise(session: Session, key: str) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": key})


def check_features(session: Session, quotas: QuotaSettings, namespace: str) -> None:
    _serialise(session, f"quota:features:{namespace}")
    count = session.scalar(
        select(func.count())
        .select_from(FeatureRow)
        .where(FeatureRow.namespace == namespace, FeatureRow.archived_at.is_(None))
    )
    if (count or 0) >= quotas.features_per_namespace:
        raise QuotaExceeded("features per namespace", quotas.features_per_namespace, "features_per_namespace")


def check_entitlements(session: Session, quotas: QuotaSettings, namespace: str, subject_key: str) -> None:
    _serialise(session, f"quota:entitlements:{namespace}:{subject_key}")
    count = session.scalar(
        select(func.count())
        .select_from(EntitlementRow)
        .where(
            EntitlementRow.namespace == namespace,
            EntitlementRow.subject_key == subject_key,
            EntitlementRow.deleted_at.is_(None),
        )
    )
    if (count or 0) >= quotas.entitlements_per_subject:
        raise QuotaExceeded("entitlements per subject", quotas.entitlements_per_subject, "entitlements_per_subject")


def check_grants(session: Session, quotas: QuotaSettings, entitlement_id: str) -> None:
    count = session.scalar(select(func.count()).select_from(GrantRow).where(GrantRow.entitlement_id == entitlement_id))
    if (count or 0) >= quotas.grants_per_entitlement:
        raise QuotaExceeded("grants per entitlement", quotas.grants_per_entitlement, "grants_per_entitlement")


def check_customers(session: Session, quotas: QuotaSettings, namespace: str) -> None:
    _serialise(session, f"quota:customers:{namespace}")
    count = session.scalar(
        select(func.count())
        .select_from(CustomerRow)
        .where(CustomerRow.namespace == namespace, CustomerRow.deleted_at.is_(None))
    )
    if (count or 0) >= quotas.customers_per_namespace:
        raise QuotaExceeded("customers per namespace", quotas.customers_per_namespace, "customers_per_namespace")
