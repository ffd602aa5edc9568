"""notification channels, rules, events and the delivery outbox

Revision ID: 0002_notifications
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import entitlements.db.types

revision = "0002_notifications"
down_revision = "0001"
branch_labels = None
depends_on = None

UTC = entitlements.db.types.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "notification_channels",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("namespace", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("custom_headers", sa.JSON(), nullable=False),
        sa.Column("signing_secret", sa.String(length=128), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("updated_at", UTC, nullable=False),
        sa.Column("deleted_at", UTC, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_channels")),
    )
    op.create_index("ix_notification_channels_namespace", "notification_channels", ["namespace", "created_at"])
    op.create_table(
        "notification_rules",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("namespace", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("thresholds", sa.JSON(), nullable=False),
        sa.Column("features", sa.JSON(), nullable=False),
        sa.Column("channels", sa.JSON(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("updated_at", UTC, nullable=False),
        sa.Column("deleted_at", UTC, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_rules")),
    )
    op.create_index("ix_notification_rules_namespace", "notification_rules", ["namespace", "created_at"])
    op.create_table(
        "notification_events",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("namespace", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("rule_id", sa.String(length=26), nullable=False),
        sa.Column("entitlement_id", sa.String(length=26), nullable=True),
        sa.Column("subject_key", sa.String(length=1024), nullable=True),
        sa.Column("feature_key", sa.String(length=256), nullable=True),
        sa.Column("period_start", UTC, nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=True),
        sa.Column("threshold", sa.JSON(), nullable=True),
        sa.Column("dedupe_key", sa.String(length=512), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["rule_id"], ["notification_rules.id"], name=op.f("fk_notification_events_rule_id_notification_rules")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_events")),
    )
    op.create_index("uq_notification_events_dedupe", "notification_events", ["dedupe_key"], unique=True)
    op.create_index("ix_notification_events_namespace", "notification_events", ["namespace", "created_at"])
    op.create_index(
        "ix_notification_events_last",
        "notification_events",
        ["rule_id", "entitlement_id", "period_start", "kind", "created_at"],
    )
    op.create_table(
        "notification_deliveries",
        sa.Column("event_id", sa.String(length=26), nullable=False),
        sa.Column("channel_id", sa.String(length=26), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTC, nullable=False),
        sa.Column("history", sa.JSON(), nullable=False),
        sa.Column("updated_at", UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["notification_events.id"],
            name=op.f("fk_notification_deliveries_event_id_notification_events"),
        ),
        sa.PrimaryKeyConstraint("event_id", "channel_id", name=op.f("pk_notification_deliveries")),
    )
    op.create_index("ix_notification_deliveries_due", "notification_deliveries", ["status", "next_attempt_at"])


def downgrade() -> None:
    op.drop_table("notification_deliveries")
    op.drop_table("notification_events")
    op.drop_table("notification_rules")
    op.drop_table("notification_channels")
