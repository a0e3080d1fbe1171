"""Deleted customers: the quota domain keeps the fact in a table of its own.

Until now a late event of a deleted customer (its subscriptions' cancellations, a slow
checkout) was kept from linking it again by looking for the applied
``customer.deleted`` event in the event log. ``deleted_customers`` now holds that fact,
written by the ``customer.deleted`` handler; this migration copies it from the events
applied before (on PostgreSQL through the partial index on customer.deleted events).

Expand, then contract: an instance of the release before looks in the event log only
and does not write this table. This release finds the deletions such an instance
applies after this migration ran (a rolling deploy, a rollback) in the event log too
(``customer_deletion_applied`` in ``webhooks/eventlog.py``), until the contract step,
in the release after, copies them over again and stops looking there.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from webhook_service.models import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deleted_customers",
        sa.Column("customer_id", sa.String(255), nullable=False),
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("deleted_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("customer_id", name="pk_deleted_customers"),
    )
    # One row per customer. Stripe sends one deletion (a copy has the same event id);
    # should there be several, the smallest event id and the earliest time are kept.
    op.execute(
        "INSERT INTO deleted_customers (customer_id, event_id, deleted_at) "
        "SELECT object_id, MIN(id), MIN(COALESCE(processed_at, received_at)) "
        "FROM stripe_events "
        "WHERE type = 'customer.deleted' AND outcome = 'processed' AND object_id IS NOT NULL "
        "GROUP BY object_id"
    )


def downgrade() -> None:
    op.drop_table("deleted_customers")
