"""customers, their subjects (usage attribution), customer-owned entitlements, grants without expiry

Revision ID: 0003_customers
Revises: 0002_notifications
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import entitlements.db.types

revision = "0003_customers"
down_revision = "0002_notifications"
branch_labels = None
depends_on = None

UTC = entitlements.db.types.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "customers",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("namespace", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=256), nullable=True),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("primary_email", sa.String(length=256), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("subject_keys", sa.JSON(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("updated_at", UTC, nullable=False),
        sa.Column("deleted_at", UTC, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_customers")),
    )
    op.create_index(
        "uq_customers_active_key",
        "customers",
        ["namespace", "key"],
        unique=True,
        sqlite_where=sa.text("deleted_at IS NULL AND key IS NOT NULL"),
        postgresql_where=sa.text("deleted_at IS NULL AND key IS NOT NULL"),
    )
    op.create_index("ix_customers_namespace_created", "customers", ["namespace", "created_at"])
    op.create_table(
        "customer_subjects",
        sa.Column("namespace", sa.String(length=64), nullable=False),
        sa.Column("subject_key", sa.String(length=1024), nullable=False),
        sa.Column("customer_id", sa.String(length=26), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk_customer_subjects_customer_id_customers")
        ),
        sa.PrimaryKeyConstraint("namespace", "subject_key", name=op.f("pk_customer_subjects")),
    )
    op.create_index("ix_customer_subjects_customer", "customer_subjects", ["customer_id"])
    with op.batch_alter_table("entitlements", schema=None) as batch_op:
        batch_op.add_column(sa.Column("customer_id", sa.String(length=26), nullable=True))
        batch_op.drop_index("uq_entitlements_active_subject_feature")
        batch_op.create_index(
            "uq_entitlements_active_subject_feature",
            ["namespace", "subject_key", "feature_id"],
            unique=True,
            sqlite_where=sa.text("deleted_at IS NULL AND customer_id IS NULL"),
            postgresql_where=sa.text("deleted_at IS NULL AND customer_id IS NULL"),
        )
        batch_op.create_index(
            "uq_entitlements_active_customer_feature",
            ["namespace", "customer_id", "feature_id"],
            unique=True,
            sqlite_where=sa.text("deleted_at IS NULL AND customer_id IS NOT NULL"),
            postgresql_where=sa.text("deleted_at IS NULL AND customer_id IS NOT NULL"),
        )

    with op.batch_alter_table("grants", schema=None) as batch_op:  # v2 grants may never expire
        batch_op.alter_column("expiration_duration", existing_type=sa.String(length=8), nullable=True)
        batch_op.alter_column("expiration_count", existing_type=sa.Integer(), nullable=True)
        batch_op.alter_column("expires_at", existing_type=UTC, nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("entitlements", schema=None) as batch_op:
        batch_op.drop_index("uq_entitlements_active_customer_feature")
        batch_op.drop_index("uq_entitlements_active_subject_feature")
        batch_op.create_index(
            "uq_entitlements_active_subject_feature",
            ["namespace", "subject_key", "feature_id"],
            unique=True,
            sqlite_where=sa.text("deleted_at IS NULL"),
            postgresql_where=sa.text("deleted_at IS NULL"),
        )
        batch_op.drop_column("customer_id")
    op.drop_index("ix_customer_subjects_customer", table_name="customer_subjects")
    op.drop_table("customer_subjects")
    op.drop_index("ix_customers_namespace_created", table_name="customers")
    op.drop_index("uq_customers_active_key", table_name="customers")
    op.drop_table("customers")
