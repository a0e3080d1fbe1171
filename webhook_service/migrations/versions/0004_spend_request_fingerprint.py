"""Scan spends: the fingerprint of the request an Idempotency-Key was first used with.

A key reused with a different request (another ``count``) is refused with 422
``IDEMPOTENCY_KEY_REUSED`` instead of replaying the first answer. Rows written before
this migration have no fingerprint and keep replaying as before.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable column without a default: no table rewrite on either database.
    op.add_column("scan_spends", sa.Column("request_sha256", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scan_spends") as batch:
        batch.drop_column("request_sha256")
