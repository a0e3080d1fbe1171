"""Tenants: API key authentication, links to Stripe customers in every order, history."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, update
from werkzeug.test import TestResponse

from tests import stripe_events as se
from tests.helpers import Clock, Subscription, sync_tenants, usage_of, utc
from webhook_service.db import Database
from webhook_service.models import api_keys, tenant_changes, tenants

INVALID_API_KEY = {
    "error": "INVALID_API_KEY",
    "message": "The API key provided is invalid or has been revoked.",
    "status": 401,
}
JAN = (utc(2025, 1, 1), utc(2025, 2, 1))
ENDPOINTS = [("GET", "/api/v1/usage"), ("POST", "/api/v1/usage/scans")]


def call(client: FlaskClient, method: str, path: str, headers: dict[str, str]) -> TestResponse:
    return client.open(path, method=method, headers=headers)


# --------------------------------------------------------------------------- 401


MANGLED: dict[str, Callable[[str], str | None]] = {
    "missing": lambda key: None,
    "unknown": lambda key: "nat_pk_" + "0" * 32,
    "truncated by one": lambda key: key[:-1],
    "truncated short": lambda key: key[:12],
    "inner space": lambda key: key[:16] + " " + key[16:],
    "inner tab": lambda key: key[:16] + "\t" + key[16:],
    "trailing word": lambda key: key + " x",
    "wrong case": lambda key: key.upper(),
    "empty": lambda key: "",
    "no prefix": lambda key: key[len("nat_pk_") :],
}


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_bad_api_keys_get_the_exact_401(
    method: str, path: str, client: FlaskClient, make_tenant: Callable[..., str]
) -> None:
    """Answer every missing or mangled key with the exact INVALID_API_KEY body."""
    key = make_tenant("tnt_auth")
    for case, mangle in MANGLED.items():
        sent = mangle(key)
        headers = {} if sent is None else {"X-API-Key": sent}
        response = call(client, method, path, headers)
        assert (response.status_code, response.json) == (401, INVALID_API_KEY), case
    assert call(client, method, path, {"x-api-key": key}).status_code == 200


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_bearer_token_is_refused_with_a_hint(
    method: str, path: str, client: FlaskClient, make_tenant: Callable[..., str]
) -> None:
    """Refuse a valid key sent as Authorization: Bearer; the hint names X-API-Key."""
    key = make_tenant("tnt_bearer")
    response = call(client, method, path, {"Authorization": f"Bearer {key}"})
    assert response.status_code == 401
    body = dict(response.json)
    hint = body.pop("hint", None)
    assert body == INVALID_API_KEY
    assert hint is None or "X-API-Key" in hint


def test_keys_revoked_by_sync_stop_working(
    client: FlaskClient, make_tenant: Callable[..., str]
) -> None:
    """Refuse a key once a sync replaced the tenant's key set."""
    old = make_tenant("tnt_revoked")
    new = "nat_pk_" + "n" * 24
    assert usage_of(client, old)["tenant_id"] == "tnt_revoked"
    assert sync_tenants(client, [{"tenant_id": "tnt_revoked", "api_keys": [new]}]).status_code == (
        200
    )
    response = client.get("/api/v1/usage", headers={"X-API-Key": old})
    assert (response.status_code, response.json) == (401, INVALID_API_KEY)
    assert usage_of(client, new)["tenant_id"] == "tnt_revoked"


def test_inactive_tenant_is_refused_even_with_its_keys_in_place(
    client: FlaskClient, make_tenant: Callable[..., str], database: Database
) -> None:
    """Refuse the keys of a tenant marked inactive, for reads and for spends."""
    key = make_tenant("tnt_inactive")
    with database.transaction(write=True) as conn:
        conn.execute(update(tenants).where(tenants.c.id == "tnt_inactive").values(active=False))
    for method, path in ENDPOINTS:
        response = call(client, method, path, {"X-API-Key": key})
        assert (response.status_code, response.json) == (401, INVALID_API_KEY)


def test_keys_are_stored_only_as_sha256(
    make_tenant: Callable[..., str], database: Database
) -> None:
    """Keep no raw key in the database, only its SHA-256."""
    key = make_tenant("tnt_hashed")
    with database.transaction() as conn:
        stored = conn.execute(
            select(api_keys.c.key_sha256).where(api_keys.c.tenant_id == "tnt_hashed")
        ).scalars()
        assert list(stored) == [hashlib.sha256(key.encode()).hexdigest()]


# --------------------------------------------------------------------------- linking


def link_state(client: FlaskClient, key: str) -> tuple[str, str | None, int]:
    body = usage_of(client, key)
    return body["plan"], body["subscription_status"], body["scans_quota"]


def history(database: Database, tenant_id: str) -> list[Any]:
    with database.transaction() as conn:
        return list(
            conn.execute(
                select(tenant_changes)
                .where(tenant_changes.c.tenant_id == tenant_id)
                .order_by(tenant_changes.c.id)
            ).all()
        )


def customer_of(database: Database, tenant_id: str) -> str | None:
    with database.transaction() as conn:
        found: str | None = conn.execute(
            select(tenants.c.stripe_customer_id).where(tenants.c.id == tenant_id)
        ).scalar_one()
        return found


@pytest.mark.parametrize("api_version", se.API_VERSIONS)
@pytest.mark.parametrize("checkout_first", [True, False])
def test_checkout_links_before_or_after_the_subscription(
    api_version: str,
    checkout_first: bool,
    client: FlaskClient,
    clock: Clock,
    make_tenant: Callable[..., str],
    post_event: Callable[..., TestResponse],
    database: Database,
) -> None:
    """Count a subscription for the tenant whichever of checkout and subscription came first."""
    key = make_tenant("tnt_checkout")
    sub = Subscription(api_version=api_version)  # no metadata: only checkout links
    checkout = sub.checkout("tnt_checkout", JAN[0] + 1)
    created = sub.event("customer.subscription.created", "active", JAN, JAN[0] + 2)
    first, second = (checkout, created) if checkout_first else (created, checkout)
    assert post_event(first).json["outcome"] == "processed"
    # A link without a subscription, or a subscription without a link, grants nothing.
    assert link_state(client, key) == ("free", None, 10)
    assert post_event(second).json["outcome"] == "processed"
    assert link_state(client, key) == ("pro", "active", 500)
    assert customer_of(database, "tnt_checkout") == sub.customer
    # The change is recorded with whichever event made the subscription count.
    last = history(database, "tnt_checkout")[-1]
    assert (last.event_id, last.plan, last.scans_quota) == (second["id"], "pro", 500)


def test_checkout_names_the_tenant_in_metadata_when_no_reference(
    client: FlaskClient,
    make_tenant: Callable[..., str],
    post_event: Callable[..., TestResponse],
    database: Database,
) -> None:
    """Link through metadata.tenant_id when client_reference_id is absent."""
    key = make_tenant("tnt_meta_checkout")
    sub = Subscription()
    checkout = sub.checkout(None, JAN[0] + 1, metadata={"tenant_id": "tnt_meta_checkout"})
    assert post_event(checkout).json["outcome"] == "processed"
    assert customer_of(database, "tnt_meta_checkout") == sub.customer
    created = sub.event("customer.subscription.created", "active", JAN, JAN[0] + 2)
    assert post_event(created).json["outcome"] == "processed"
    assert link_state(client, key) == ("pro", "active", 500)


def test_checkout_without_tenant_or_not_a_subscription_links_nothing(
    post_event: Callable[..., TestResponse], database: Database
) -> None:
    """Process a checkout without a tenant, or in payment mode, without linking anything."""
    sub = Subscription()
    anonymous = sub.checkout(None, JAN[0])
    payment = se.checkout_completed_event(
        session_id=se.new_id("cs_test"),
        customer=sub.customer,
        subscription=None,
        created=JAN[0],
        api_version=se.BASIL_API_VERSION,
        client_reference_id="tnt_payment_only",
        mode="payment",
    )
    for event in (anonymous, payment):
        response = post_event(event)
        assert response.json["outcome"] == "processed"
    with database.transaction() as conn:
        assert conn.execute(select(tenants.c.id)).all() == []


def test_checkout_for_an_unknown_tenant_creates_it_without_keys(
    client: FlaskClient,
    make_tenant: Callable[..., str],
    post_event: Callable[..., TestResponse],
    database: Database,
) -> None:
    """Create a tenant the NAT app has not synced yet; its keys count once synced."""
    sub = Subscription()
    assert post_event(sub.checkout("tnt_early", JAN[0])).json["outcome"] == "processed"
    created = sub.event("customer.subscription.created", "active", JAN, JAN[0] + 1)
    assert post_event(created).json["outcome"] == "processed"
    assert customer_of(database, "tnt_early") == sub.customer
    key = make_tenant("tnt_early")  # sync without stripe_customer_id keeps the link
    assert link_state(client, key) == ("pro", "active", 500)


def test_subscription_metadata_links_the_tenant(
    client: FlaskClient,
    make_tenant: Callable[..., str],
    post_event: Callable[..., TestResponse],
    database: Database,
) -> None:
    """Link an unlinked customer to the tenant named in the subscription's metadata."""
    key = make_tenant("tnt_meta")
    sub = Subscription(metadata={"tenant_id": "tnt_meta"})
    response = post_event(sub.event("customer.subscription.created", "trialing", JAN, JAN[0]))
    assert response.json["outcome"] == "processed"
    assert customer_of(database, "tnt_meta") == sub.customer
    assert link_state(client, key) == ("pro", "trialing", 500)
    assert history(database, "tnt_meta")[-1].event_id == response.json["event_id"]


def test_metadata_never_steals_a_tenant_linked_elsewhere(
    client: FlaskClient,
    make_tenant: Callable[..., str],
    post_event: Callable[..., TestResponse],
    database: Database,
) -> None:
    """Leave a tenant's existing customer alone when another customer's metadata names it."""
    key = make_tenant("tnt_taken", customer="cus_AlreadyLinked01")
    stranger = Subscription(metadata={"tenant_id": "tnt_taken"})
    event = stranger.event("customer.subscription.created", "active", JAN, JAN[0])
    assert post_event(event).json["outcome"] == "processed"
    assert customer_of(database, "tnt_taken") == "cus_AlreadyLinked01"
    assert link_state(client, key) == ("free", None, 10)


def test_invalid_metadata_is_ignored_once_the_customer_is_linked(
    client: FlaskClient,
    make_tenant: Callable[..., str],
    post_event: Callable[..., TestResponse],
) -> None:
    """Apply a linked customer's subscription even when its metadata is no tenant id."""
    sub = Subscription(metadata={"tenant_id": "not a tenant id!"})
    key = make_tenant("tnt_linked_meta", customer=sub.customer)
    event = sub.event("customer.subscription.created", "active", JAN, JAN[0])
    assert post_event(event).json["outcome"] == "processed"
    assert link_state(client, key) == ("pro", "active", 500)


def test_subscription_of_an_unknown_customer_counts_once_synced(
    client: FlaskClient,
    clock: Clock,
    make_tenant: Callable[..., str],
    post_event: Callable[..., TestResponse],
    database: Database,
) -> None:
    """Count a subscription that arrived before anyone knew its customer, once sync links it."""
    key = make_tenant("tnt_late_link")
    sub = Subscription()
    created = sub.event("customer.subscription.created", "active", JAN, JAN[0])
    assert post_event(created).json["outcome"] == "processed"
    assert link_state(client, key) == ("free", None, 10)
    linked = sync_tenants(
        client, [{"tenant_id": "tnt_late_link", "stripe_customer_id": sub.customer}]
    )
    assert linked.json == {"synced": 1, "created": 0, "updated": 1}
    assert link_state(client, key) == ("pro", "active", 500)
    last = history(database, "tnt_late_link")[-1]
    assert (last.source, last.event_id, last.plan) == ("sync", None, "pro")


@pytest.mark.parametrize("api_version", se.API_VERSIONS)
def test_customer_deleted_unlinks_and_late_events_do_not_relink(
    api_version: str,
    client: FlaskClient,
    make_tenant: Callable[..., str],
    post_event: Callable[..., TestResponse],
    database: Database,
) -> None:
    """Unlink on customer.deleted; a late subscription or checkout event leaves it unlinked."""
    key = make_tenant("tnt_gone")
    sub = Subscription(api_version=api_version, metadata={"tenant_id": "tnt_gone"})
    checkout = sub.checkout("tnt_gone", JAN[0] + 1)
    created = sub.event("customer.subscription.created", "active", JAN, JAN[0] + 2)
    assert post_event(created).json["outcome"] == "processed"
    assert link_state(client, key) == ("pro", "active", 500)

    # Deleting a customer cancels its subscriptions: Stripe sends both, in any order.
    deleted = sub.customer_deleted(JAN[0] + 3600)
    canceled = sub.event("customer.subscription.deleted", "canceled", JAN, JAN[0] + 3600)
    response = post_event(deleted)
    assert response.json["outcome"] == "processed"
    assert customer_of(database, "tnt_gone") is None
    assert link_state(client, key) == ("free", None, 10)
    assert history(database, "tnt_gone")[-1].event_id == deleted["id"]

    assert post_event(canceled).json["outcome"] == "processed"
    assert post_event(checkout).json["outcome"] == "processed"
    assert customer_of(database, "tnt_gone") is None
    assert link_state(client, key) == ("free", None, 10)


def test_customer_deleted_of_an_unknown_customer_is_harmless(
    post_event: Callable[..., TestResponse], make_tenant: Callable[..., str], database: Database
) -> None:
    """Process customer.deleted for a customer no tenant has, touching no tenant."""
    make_tenant("tnt_bystander", customer="cus_Bystander00001")
    event = se.customer_deleted_event(
        customer="cus_Nobody00000001", created=JAN[0], api_version=se.BASIL_API_VERSION
    )
    assert post_event(event).json["outcome"] == "processed"
    assert customer_of(database, "tnt_bystander") == "cus_Bystander00001"


def test_checkout_moves_a_customer_to_the_tenant_that_paid(
    client: FlaskClient,
    make_tenant: Callable[..., str],
    post_event: Callable[..., TestResponse],
    database: Database,
) -> None:
    """Give the customer to the checkout's tenant, taking it from the one that had it."""
    sub = Subscription()
    before = make_tenant("tnt_before", customer=sub.customer)
    after = make_tenant("tnt_after")
    created = sub.event("customer.subscription.created", "active", JAN, JAN[0])
    assert post_event(created).json["outcome"] == "processed"
    assert link_state(client, before) == ("pro", "active", 500)
    checkout = sub.checkout("tnt_after", JAN[0] + 60)
    assert post_event(checkout).json["outcome"] == "processed"
    assert (customer_of(database, "tnt_before"), customer_of(database, "tnt_after")) == (
        None,
        sub.customer,
    )
    assert link_state(client, before) == ("free", None, 10)
    assert link_state(client, after) == ("pro", "active", 500)
    assert history(database, "tnt_before")[-1].event_id == checkout["id"]
    assert history(database, "tnt_after")[-1].event_id == checkout["id"]


# --------------------------------------------------------------------------- history


def test_history_records_only_changes_with_their_cause(
    client: FlaskClient,
    clock: Clock,
    make_tenant: Callable[..., str],
    post_event: Callable[..., TestResponse],
    database: Database,
) -> None:
    """Write a row per change of plan, status or period, none for events that change nothing."""
    sub = Subscription()
    make_tenant("tnt_history", customer=sub.customer)
    feb = (utc(2025, 2, 1), utc(2025, 3, 1))
    created = sub.event("customer.subscription.created", "active", JAN, JAN[0])
    same = sub.event("customer.subscription.updated", "active", JAN, JAN[0] + 5)
    stale = sub.event("customer.subscription.updated", "past_due", JAN, JAN[0] + 1)
    renewal = sub.invoice(feb, feb[0] + 3600)
    failed = sub.invoice(feb, feb[0] + 7200, event_type="invoice.payment_failed")
    past_due = sub.event("customer.subscription.updated", "past_due", feb, feb[0] + 9000)
    outcomes = [post_event(e).json["outcome"] for e in (created, same, stale)]
    assert outcomes == ["processed", "processed", "stale"]
    clock.set(utc(2025, 2, 1, 2))
    for event in (renewal, failed, past_due):
        assert post_event(event).json["outcome"] == "processed"
    assert post_event(created).json["outcome"] == "duplicate"

    rows = history(database, "tnt_history")
    assert [(r.source, r.event_id) for r in rows] == [
        ("sync", None),
        ("webhook", created["id"]),
        ("webhook", renewal["id"]),
        ("webhook", past_due["id"]),
    ]
    assert [
        (r.plan, r.subscription_status, r.scans_quota, r.period_start.day, r.period_start.month)
        for r in rows
    ] == [
        ("free", None, 10, 1, 1),
        ("pro", "active", 500, 1, 1),
        ("pro", "active", 500, 1, 2),
        ("pro", "past_due", 500, 1, 2),
    ]
    assert rows[2].quota_reset_date.isoformat() == "2025-03-01T00:00:00+00:00"
