"""Deleted customers: the quota domain keeps the fact (``deleted_customers``, migration 0006).

A late event of a deleted customer never links it to a tenant again: whether the
deletion was applied by this release (the table), logged by the release before
migration 0006 (copied by the migration), or applied by an instance of that release
after the migration ran (found in the event log until the contract step).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from flask import Flask
from sqlalchemy import inspect, select
from werkzeug.test import TestResponse

from tests import stripe_events as se
from tests.helpers import Subscription, count_rows, utc
from webhook_service.db import Database
from webhook_service.migrate import alembic_config, head_revision, upgrade
from webhook_service.models import deleted_customers, stripe_events, tenants

JAN = (utc(2025, 1, 1), utc(2025, 2, 1))
RECEIVED = datetime(2025, 1, 2, 9, 30, 15, 123456, tzinfo=UTC)


def customer_of(database: Database, tenant_id: str) -> str | None:
    with database.transaction() as conn:
        found: str | None = conn.execute(
            select(tenants.c.stripe_customer_id).where(tenants.c.id == tenant_id)
        ).scalar_one()
    return found


def logged_event(
    event_id: str, event_type: str, object_id: str, outcome: str, received_at: datetime
) -> dict[str, Any]:
    """A row of the event log as the service writes it."""
    return {
        "id": event_id,
        "type": event_type,
        "api_version": "2025-03-31.basil",
        "created": int(received_at.timestamp()) - 1,
        "livemode": False,
        "received_at": received_at,
        "processed_at": None if outcome == "failed" else received_at,
        "outcome": outcome,
        "attempts": 1,
        "last_error": "boom" if outcome == "failed" else None,
        "object_id": object_id,
        "tenant_id": None,
        "payload": "{}",
    }


def late_events_leave_it_unlinked(
    post_event: Callable[..., TestResponse], database: Database, sub: Subscription, tenant: str
) -> None:
    """A slow checkout and the cancellation of the deleted customer's subscription."""
    canceled = sub.event("customer.subscription.deleted", "canceled", JAN, JAN[0] + 3600)
    checkout = sub.checkout(tenant, JAN[0] + 1)
    assert post_event(canceled).json["outcome"] == "processed"
    assert post_event(checkout).json["outcome"] == "processed"
    assert customer_of(database, tenant) is None


def test_a_deletion_outlives_the_pruning_of_its_event(
    app: Flask,
    make_tenant: Callable[..., str],
    post_event: Callable[..., TestResponse],
    database: Database,
) -> None:
    """Keep a deleted customer unlinked after `events prune` removed its deletion event."""
    make_tenant("tnt_pruned")
    sub = Subscription(metadata={"tenant_id": "tnt_pruned"})
    assert post_event(sub.customer_deleted(JAN[0] + 2)).json["outcome"] == "processed"
    pruned = app.extensions["nat"].event_log.prune(datetime.now(UTC) + timedelta(seconds=1))
    assert pruned == 1
    late_events_leave_it_unlinked(post_event, database, sub, "tnt_pruned")


def test_a_deletion_applied_by_the_release_before_0006_still_counts(
    make_tenant: Callable[..., str],
    post_event: Callable[..., TestResponse],
    database: Database,
) -> None:
    """Honour a deletion that only the event log knows (an instance of the release before
    applied it after the migration ran): no row in deleted_customers, yet no relink."""
    make_tenant("tnt_rolling")
    sub = Subscription(metadata={"tenant_id": "tnt_rolling"})
    with database.transaction(write=True) as conn:
        conn.execute(
            stripe_events.insert(),
            logged_event("evt_rolling", "customer.deleted", sub.customer, "processed", RECEIVED),
        )
    late_events_leave_it_unlinked(post_event, database, sub, "tnt_rolling")


def test_customer_deleted_records_the_fact_once(
    post_event: Callable[..., TestResponse], database: Database
) -> None:
    """Write one deleted_customers row naming the event, however often it is delivered."""
    sub = Subscription()
    deleted = sub.customer_deleted(JAN[0])
    assert post_event(deleted).json["outcome"] == "processed"
    assert post_event(deleted).json["outcome"] == "duplicate"
    with database.transaction() as conn:
        rows = conn.execute(select(deleted_customers.c.customer_id, deleted_customers.c.event_id))
        assert rows.all() == [(sub.customer, deleted["id"])]


def test_a_customer_id_longer_than_any_column_is_deleted_harmlessly(
    post_event: Callable[..., TestResponse], database: Database
) -> None:
    """Process customer.deleted of an id no column holds (no tenant can have it): 200."""
    event = se.customer_deleted_event(
        customer="cus_" + "x" * 300, created=JAN[0], api_version=se.BASIL_API_VERSION
    )
    assert post_event(event).json["outcome"] == "processed"
    assert count_rows(database, "deleted_customers") == 0


def migrate(database: Database, revision: str, *, down: bool = False) -> None:
    if not down:
        upgrade(database, revision)
        return
    config = alembic_config()
    with database.transaction(write=True) as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, revision)


@pytest.fixture
def at_0005(database: Database) -> Iterator[Database]:
    """The test's database migrated down to 0005, brought back to head afterwards."""
    migrate(database, "0005", down=True)
    try:
        yield database
    finally:
        upgrade(database)


def test_migration_0006_copies_the_deletions_already_applied(at_0005: Database) -> None:
    """Copy each customer of a processed customer.deleted event, once; drop it on downgrade."""
    later = RECEIVED + timedelta(minutes=5)
    with at_0005.transaction(write=True) as conn:
        conn.execute(
            stripe_events.insert(),
            [
                logged_event("evt_a", "customer.deleted", "cus_Old1", "processed", RECEIVED),
                logged_event("evt_b1", "customer.deleted", "cus_Old2", "processed", RECEIVED),
                logged_event("evt_b2", "customer.deleted", "cus_Old2", "processed", later),
                logged_event("evt_c", "customer.deleted", "cus_Failed", "failed", RECEIVED),
                logged_event("evt_d", "customer.subscription.deleted", "sub_1", "processed", later),
            ],
        )
    migrate(at_0005, "0006")
    with at_0005.transaction() as conn:
        copied = conn.execute(select(deleted_customers).order_by(deleted_customers.c.customer_id))
        assert copied.all() == [("cus_Old1", "evt_a", RECEIVED), ("cus_Old2", "evt_b1", RECEIVED)]

    migrate(at_0005, "0005", down=True)
    with at_0005.engine.connect() as conn:
        assert not inspect(conn).has_table("deleted_customers")
    assert head_revision() == "0006"
