"""SQLAlchemy 2 models of the entitlement state. The Alembic migrations in ./migrations create exactly these.

Invariants the database enforces itself (so concurrent requests cannot break them):
- one non-archived feature per (namespace, key);
- one active (not deleted) entitlement per (namespace, subject, feature) and per (namespace, customer, feature);
- a subject belongs to at most one active customer (deleting a customer deletes its subject rows);
- one active customer per (namespace, key).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, MetaData, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from entitlements.db.types import DecimalText, UTCDateTime

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ID = String(26)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class FeatureRow(Base):
    __tablename__ = "features"
    __table_args__ = (
        Index(
            "uq_features_active_key",
            "namespace",
            "key",
            unique=True,
            sqlite_where=text("archived_at IS NULL"),
            postgresql_where=text("archived_at IS NULL"),
        ),
        Index("ix_features_namespace_meter", "namespace", "meter_slug"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    namespace: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(256))
    name: Mapped[str] = mapped_column(String(256))
    meter_slug: Mapped[str | None] = mapped_column(String(256))
    meter_group_by_filters: Mapped[dict[str, str]] = mapped_column(JSON)
    metadata_: Mapped[dict[str, str]] = mapped_column("metadata", JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class CustomerRow(Base):
    __tablename__ = "customers"
    __table_args__ = (
        Index(
            "uq_customers_active_key",
            "namespace",
            "key",
            unique=True,
            sqlite_where=text("deleted_at IS NULL AND key IS NOT NULL"),
            postgresql_where=text("deleted_at IS NULL AND key IS NOT NULL"),
        ),
        Index("ix_customers_namespace_created", "namespace", "created_at"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    namespace: Mapped[str] = mapped_column(String(64))
    key: Mapped[str | None] = mapped_column(String(256))
    name: Mapped[str] = mapped_column(String(256))
    description: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[dict[str, str]] = mapped_column("metadata", JSON)
    primary_email: Mapped[str | None] = mapped_column(String(256))
    currency: Mapped[str | None] = mapped_column(String(3))
    subject_keys: Mapped[list[str]] = mapped_column(JSON)  # in the order given; customer_subjects indexes them
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class CustomerSubjectRow(Base):
    """The usage attribution of active customers: the primary key makes a subject belong to at most one."""

    __tablename__ = "customer_subjects"
    __table_args__ = (Index("ix_customer_subjects_customer", "customer_id"),)

    namespace: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject_key: Mapped[str] = mapped_column(String(1024), primary_key=True)
    customer_id: Mapped[str] = mapped_column(ID, ForeignKey("customers.id"))


class EntitlementRow(Base):
    __tablename__ = "entitlements"
    __table_args__ = (
        Index(
            "uq_entitlements_active_subject_feature",
            "namespace",
            "subject_key",
            "feature_id",
            unique=True,
            sqlite_where=text("deleted_at IS NULL AND customer_id IS NULL"),
            postgresql_where=text("deleted_at IS NULL AND customer_id IS NULL"),
        ),
        Index(
            "uq_entitlements_active_customer_feature",
            "namespace",
            "customer_id",
            "feature_id",
            unique=True,
            sqlite_where=text("deleted_at IS NULL AND customer_id IS NOT NULL"),
            postgresql_where=text("deleted_at IS NULL AND customer_id IS NOT NULL"),
        ),
        Index("ix_entitlements_namespace_subject", "namespace", "subject_key"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    namespace: Mapped[str] = mapped_column(String(64))
    subject_key: Mapped[str] = mapped_column(String(1024))
    feature_id: Mapped[str] = mapped_column(ID, ForeignKey("features.id"))
    feature_key: Mapped[str] = mapped_column(String(256))
    type: Mapped[str] = mapped_column(String(16))
    config: Mapped[str | None] = mapped_column(Text)
    usage_period_interval: Mapped[str | None] = mapped_column(String(64))
    usage_period_anchor: Mapped[datetime | None] = mapped_column(UTCDateTime)
    measure_usage_from: Mapped[datetime | None] = mapped_column(UTCDateTime)
    is_soft_limit: Mapped[bool] = mapped_column(Boolean)
    issue_after_reset: Mapped[Decimal | None] = mapped_column(DecimalText)
    issue_after_reset_priority: Mapped[int] = mapped_column(Integer)
    preserve_overage_at_reset: Mapped[bool] = mapped_column(Boolean)
    metadata_: Mapped[dict[str, str]] = mapped_column("metadata", JSON)
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Set for a customer's entitlement (then subject_key holds the customer's id); NULL for a subject's.
    customer_id: Mapped[str | None] = mapped_column(ID)


class GrantRow(Base):
    __tablename__ = "grants"
    __table_args__ = (
        Index("ix_grants_entitlement", "entitlement_id"),
        Index("ix_grants_namespace_created", "namespace", "created_at"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    namespace: Mapped[str] = mapped_column(String(64))
    entitlement_id: Mapped[str] = mapped_column(ID, ForeignKey("entitlements.id"))
    amount: Mapped[Decimal] = mapped_column(DecimalText)
    priority: Mapped[int] = mapped_column(Integer)
    effective_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expiration_duration: Mapped[str | None] = mapped_column(String(8))
    expiration_count: Mapped[int | None] = mapped_column(Integer)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    min_rollover_amount: Mapped[Decimal] = mapped_column(DecimalText)
    max_rollover_amount: Mapped[Decimal] = mapped_column(DecimalText)
    recurrence_interval: Mapped[str | None] = mapped_column(String(64))
    recurrence_anchor: Mapped[datetime | None] = mapped_column(UTCDateTime)
    metadata_: Mapped[dict[str, str]] = mapped_column("metadata", JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    voided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ResetRow(Base):
    __tablename__ = "usage_resets"
    __table_args__ = (Index("ix_usage_resets_entitlement", "entitlement_id", "effective_at"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    entitlement_id: Mapped[str] = mapped_column(ID, ForeignKey("entitlements.id"))
    effective_at: Mapped[datetime] = mapped_column(UTCDateTime)
    retain_anchor: Mapped[bool] = mapped_column(Boolean)
    preserve_overage: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SnapshotRow(Base):
    """A cache of engine state; deleting every row is always safe (reads recompute)."""

    __tablename__ = "balance_snapshots"

    entitlement_id: Mapped[str] = mapped_column(ID, ForeignKey("entitlements.id"), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    version: Mapped[int] = mapped_column(Integer)
    state: Mapped[dict[str, Any]] = mapped_column(JSON)


# ---- notifications (entitlements/notifications/README.md) ----
# channels: where to deliver; rules: what to notice; events: what was noticed (`dedupe_key` unique, so two
# evaluators never create one threshold event twice); deliveries: the outbox, one row per (event, channel),
# written in the event's transaction and moved to SUCCESS or FAILED by the dispatcher, every attempt kept.


class ChannelRow(Base):
    __tablename__ = "notification_channels"
    __table_args__ = (Index("ix_notification_channels_namespace", "namespace", "created_at"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    namespace: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(256))
    url: Mapped[str] = mapped_column(String(2048))
    custom_headers: Mapped[dict[str, str]] = mapped_column(JSON)
    signing_secret: Mapped[str] = mapped_column(String(128))
    disabled: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class RuleRow(Base):
    __tablename__ = "notification_rules"
    __table_args__ = (Index("ix_notification_rules_namespace", "namespace", "created_at"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    namespace: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(256))
    disabled: Mapped[bool] = mapped_column(Boolean)
    thresholds: Mapped[list[dict[str, str]]] = mapped_column(JSON)
    features: Mapped[list[str]] = mapped_column(JSON)
    channels: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class EventRow(Base):
    __tablename__ = "notification_events"
    __table_args__ = (
        Index("uq_notification_events_dedupe", "dedupe_key", unique=True),
        Index("ix_notification_events_namespace", "namespace", "created_at"),
        Index("ix_notification_events_last", "rule_id", "entitlement_id", "period_start", "kind", "created_at"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    namespace: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(64))
    rule_id: Mapped[str] = mapped_column(ID, ForeignKey("notification_rules.id"))
    entitlement_id: Mapped[str | None] = mapped_column(ID)
    subject_key: Mapped[str | None] = mapped_column(String(1024))
    feature_key: Mapped[str | None] = mapped_column(String(256))
    period_start: Mapped[datetime | None] = mapped_column(UTCDateTime)
    kind: Mapped[str | None] = mapped_column(String(16))
    threshold: Mapped[dict[str, str] | None] = mapped_column(JSON)
    dedupe_key: Mapped[str] = mapped_column(String(512))
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DeliveryRow(Base):
    __tablename__ = "notification_deliveries"
    __table_args__ = (Index("ix_notification_deliveries_due", "status", "next_attempt_at"),)

    event_id: Mapped[str] = mapped_column(ID, ForeignKey("notification_events.id"), primary_key=True)
    channel_id: Mapped[str] = mapped_column(ID, primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
