"""initial entitlement schema

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import entitlements.db.types

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "features",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("namespace", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=256), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("meter_slug", sa.String(length=256), nullable=True),
        sa.Column("meter_group_by_filters", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("created_at", entitlements.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", entitlements.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("archived_at", entitlements.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_features")),
    )
    with op.batch_alter_table("features", schema=None) as batch_op:
        batch_op.create_index("ix_features_namespace_meter", ["namespace", "meter_slug"], unique=False)
        batch_op.create_index(
            "uq_features_active_key",
            ["namespace", "key"],
            unique=True,
            sqlite_where=sa.text("archived_at IS NULL"),
            postgresql_where=sa.text("archived_at IS NULL"),
        )

    op.create_table(
        "entitlements",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("namespace", sa.String(length=64), nullable=False),
        sa.Column("subject_key", sa.String(length=1024), nullable=False),
        sa.Column("feature_id", sa.String(length=26), nullable=False),
        sa.Column("feature_key", sa.String(length=256), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("config", sa.Text(), nullable=True),
        sa.Column("usage_period_interval", sa.String(length=64), nullable=True),
        sa.Column("usage_period_anchor", entitlements.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("measure_usage_from", entitlements.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("is_soft_limit", sa.Boolean(), nullable=False),
        sa.Column("issue_after_reset", entitlements.db.types.DecimalText(length=80), nullable=True),
        sa.Column("issue_after_reset_priority", sa.Integer(), nullable=False),
        sa.Column("preserve_overage_at_reset", sa.Boolean(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", entitlements.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", entitlements.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", entitlements.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["feature_id"], ["features.id"], name=op.f("fk_entitlements_feature_id_features")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_entitlements")),
    )
    with op.batch_alter_table("entitlements", schema=None) as batch_op:
        batch_op.create_index("ix_entitlements_namespace_subject", ["namespace", "subject_key"], unique=False)
        batch_op.create_index(
            "uq_entitlements_active_subject_feature",
            ["namespace", "subject_key", "feature_id"],
            unique=True,
            sqlite_where=sa.text("deleted_at IS NULL"),
            postgresql_where=sa.text("deleted_at IS NULL"),
        )

    op.create_table(
        "balance_snapshots",
        sa.Column("entitlement_id", sa.String(length=26), nullable=False),
        sa.Column("at", entitlements.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_at", entitlements.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["entitlement_id"], ["entitlements.id"], name=op.f("fk_balance_snapshots_entitlement_id_entitlements")
        ),
        sa.PrimaryKeyConstraint("entitlement_id", "at", name=op.f("pk_balance_snapshots")),
    )
    op.create_table(
        "grants",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("namespace", sa.String(length=64), nullable=False),
        sa.Column("entitlement_id", sa.String(length=26), nullable=False),
        sa.Column("amount", entitlements.db.types.DecimalText(length=80), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("effective_at", entitlements.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expiration_duration", sa.String(length=8), nullable=False),
        sa.Column("expiration_count", sa.Integer(), nullable=False),
        sa.Column("expires_at", entitlements.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("min_rollover_amount", entitlements.db.types.DecimalText(length=80), nullable=False),
        sa.Column("max_rollover_amount", entitlements.db.types.DecimalText(length=80), nullable=False),
        sa.Column("recurrence_interval", sa.String(length=64), nullable=True),
        sa.Column("recurrence_anchor", entitlements.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("created_at", entitlements.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", entitlements.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("voided_at", entitlements.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["entitlement_id"], ["entitlements.id"], name=op.f("fk_grants_entitlement_id_entitlements")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_grants")),
    )
    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.create_index("ix_grants_entitlement", ["entitlement_id"], unique=False)
        batch_op.create_index("ix_grants_namespace_created", ["namespace", "created_at"], unique=False)

    op.create_table(
        "usage_resets",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("entitlement_id", sa.String(length=26), nullable=False),
        sa.Column("effective_at", entitlements.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("retain_anchor", sa.Boolean(), nullable=False),
        sa.Column("preserve_overage", sa.Boolean(), nullable=False),
        sa.Column("created_at", entitlements.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["entitlement_id"], ["entitlements.id"], name=op.f("fk_usage_resets_entitlement_id_entitlements")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_resets")),
    )
    with op.batch_alter_table("usage_resets", schema=None) as batch_op:
        batch_op.create_index("ix_usage_resets_entitlement", ["entitlement_id", "effective_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("usage_resets", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_resets_entitlement")

    op.drop_table("usage_resets")
    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.drop_index("ix_grants_namespace_created")
        batch_op.drop_index("ix_grants_entitlement")

    op.drop_table("grants")
    op.drop_table("balance_snapshots")
    with op.batch_alter_table("entitlements", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_entitlements_active_subject_feature",
            sqlite_where=sa.text("deleted_at IS NULL"),
            postgresql_where=sa.text("deleted_at IS NULL"),
        )
        batch_op.drop_index("ix_entitlements_namespace_subject")

    op.drop_table("entitlements")
    with op.batch_alter_table("features", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_features_active_key",
            sqlite_where=sa.text("archived_at IS NULL"),
            postgresql_where=sa.text("archived_at IS NULL"),
        )
        batch_op.drop_index("ix_features_namespace_meter")

    op.drop_table("features")
