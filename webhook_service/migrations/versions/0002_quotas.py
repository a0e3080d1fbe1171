"""Tenants, API keys, subscriptions, scan spends and the tenant change history.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from webhook_service.models import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("stripe_customer_id", sa.String(255)),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tenants"),
        sa.UniqueConstraint("stripe_customer_id", name="uq_tenants_stripe_customer_id"),
    )
    op.create_table(
        "api_keys",
        sa.Column("key_sha256", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("key_sha256", name="pk_api_keys"),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name="fk_api_keys_tenant_id_tenants",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_api_keys_tenant_id", "api_keys", ["tenant_id"])
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("customer_id", sa.String(255)),
        sa.Column("metadata_tenant_id", sa.String(64)),
        sa.Column("status", sa.String(32)),
        sa.Column("price_id", sa.String(255)),
        sa.Column("price_lookup_key", sa.String(255)),
        sa.Column("price_interval", sa.String(16)),
        sa.Column("price_interval_count", sa.Integer),
        sa.Column("quantity", sa.Integer),
        sa.Column("cancel_at_period_end", sa.Boolean, nullable=False),
        sa.Column("current_period_start", UTCDateTime),
        sa.Column("current_period_end", UTCDateTime),
        sa.Column("state_created", sa.BigInteger),
        sa.Column("state_rank", sa.Integer),
        sa.Column("state_event_id", sa.String(255)),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_subscriptions"),
    )
    op.create_index("ix_subscriptions_customer_id", "subscriptions", ["customer_id"])
    op.create_table(
        "scan_spends",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("spent_at", UTCDateTime, nullable=False),
        sa.Column("idempotency_key", sa.String(255)),
        sa.Column("response", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_scan_spends"),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name="fk_scan_spends_tenant_id_tenants",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "tenant_id", "idempotency_key", name="uq_scan_spends_tenant_id_idempotency_key"
        ),
    )
    op.create_index("ix_scan_spends_tenant_id_spent_at", "scan_spends", ["tenant_id", "spent_at"])
    op.create_table(
        "tenant_changes",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("event_id", sa.String(255)),
        sa.Column("changed_at", UTCDateTime, nullable=False),
        sa.Column("plan", sa.String(64), nullable=False),
        sa.Column("subscription_status", sa.String(32)),
        sa.Column("scans_quota", sa.Integer, nullable=False),
        sa.Column("period_start", UTCDateTime, nullable=False),
        sa.Column("quota_reset_date", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tenant_changes"),
    )
    op.create_index("ix_tenant_changes_tenant_id", "tenant_changes", ["tenant_id"])


def downgrade() -> None:
    op.drop_table("tenant_changes")
    op.drop_table("scan_spends")
    op.drop_table("subscriptions")
    op.drop_table("api_keys")
    op.drop_table("tenants")
