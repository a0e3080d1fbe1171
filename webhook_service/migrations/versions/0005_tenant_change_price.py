"""Tenant history: the event type, price and quantity behind each change of quota.

``tenants show`` explains a quota (1000 = 2 x 500) from the history line alone, even
after the event itself was pruned from the log.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenant_changes") as batch:
        batch.add_column(sa.Column("event_type", sa.String(255)))
        batch.add_column(sa.Column("price_id", sa.String(255)))
        batch.add_column(sa.Column("price_lookup_key", sa.String(255)))
        batch.add_column(sa.Column("quantity", sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("tenant_changes") as batch:
        batch.drop_column("quantity")
        batch.drop_column("price_lookup_key")
        batch.drop_column("price_id")
        batch.drop_column("event_type")
