"""A tenant sync of the largest request accepted: 10,000 tenants, 3 keys and a customer each.

The whole sync is applied in set-based statements (quotas/sync.py), all or nothing.
Timing is not asserted here (see the README's tenant sync section for the figures and
how they were measured); what is checked is that everything was applied right.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from tests import stripe_events as se
from tests.helpers import (
    WEBHOOK_SECRET,
    Subscription,
    count_rows,
    new_api_key,
    sync_tenants,
    usage_of,
    utc,
)
from webhook_service.db import Database
from webhook_service.models import tenant_changes, tenants
from webhook_service.quotas.service import MAX_SYNC_TENANTS

N = MAX_SYNC_TENANTS
JAN = (utc(2025, 1, 1), utc(2025, 2, 1))


def customer_of(index: int) -> str:
    return f"cus_Bulk{index:010d}"


def big_sync(keys: dict[str, list[str]]) -> list[dict[str, Any]]:
    return [
        {"tenant_id": tenant_id, "api_keys": tenant_keys, "stripe_customer_id": customer_of(i)}
        for i, (tenant_id, tenant_keys) in enumerate(keys.items())
    ]


def test_sync_of_the_largest_request(
    client: FlaskClient, database: Database, post_event: Callable[..., TestResponse]
) -> None:
    """Create 10,000 tenants with 3 keys and a customer each; a second sync moves things."""
    rng = random.Random(7)
    keys = {f"tnt_bulk_{i:05d}": [new_api_key() for _ in range(3)] for i in range(N)}
    first = sync_tenants(client, big_sync(keys))
    assert (first.status_code, first.json) == (200, {"synced": N, "created": N, "updated": 0})
    assert count_rows(database, "tenants") == N
    assert count_rows(database, "api_keys") == 3 * N
    assert count_rows(database, "tenants", "stripe_customer_id IS NOT NULL") == N
    assert count_rows(database, "tenant_changes", "source = 'sync'") == N  # one per new tenant
    for tenant_id in rng.sample(sorted(keys), 20):
        for key in keys[tenant_id]:
            assert usage_of(client, key)["tenant_id"] == tenant_id

    # Tenant 1's customer subscribes: moving that customer changes two entitlements.
    sub = Subscription(customer=customer_of(1))
    created = sub.event("customer.subscription.created", "active", JAN, JAN[0])
    assert post_event(created).json["outcome"] == "processed"

    # Second sync: every tenant again; tenant 0 takes tenant 1's customer and a key of
    # tenant 2, tenant 3 is deactivated, tenant 4 omits its keys and customer, tenant 5
    # gets new keys; the others are unchanged.
    names = sorted(keys)
    second = big_sync(keys)
    moved_key = keys[names[2]][0]
    second[0].update(stripe_customer_id=customer_of(1), api_keys=[*keys[names[0]], moved_key])
    second[1].pop("stripe_customer_id")
    second[2]["api_keys"] = keys[names[2]][1:]
    second[3]["active"] = False
    second[4] = {"tenant_id": names[4]}
    fresh = [new_api_key(), new_api_key()]
    second[5]["api_keys"] = fresh
    with database.transaction() as conn:  # ids go on across tests on PostgreSQL
        changes_before = conn.execute(select(func.max(tenant_changes.c.id))).scalar_one()
    response = sync_tenants(client, second)
    assert (response.status_code, response.json) == (200, {"synced": N, "created": 0, "updated": N})

    with database.transaction() as conn:
        links = dict(conn.execute(select(tenants.c.id, tenants.c.stripe_customer_id)).all())
        actives = dict(conn.execute(select(tenants.c.id, tenants.c.active)).all())
        new_changes = conn.execute(
            select(tenant_changes.c.tenant_id, tenant_changes.c.plan)
            .where(tenant_changes.c.id > changes_before)
            .order_by(tenant_changes.c.id)
        ).all()
        total = conn.execute(select(func.count()).select_from(tenant_changes)).scalar_one()
    assert links[names[0]] == customer_of(1)
    assert links[names[1]] is None  # its customer moved to tenant 0
    assert links[names[4]] == customer_of(4)  # omitted: the link stays
    assert actives[names[3]] is False
    assert sum(1 for c in links.values() if c is not None) == N - 1
    assert usage_of(client, moved_key)["tenant_id"] == names[0]
    assert usage_of(client, keys[names[0]][0])["plan"] == "pro"
    assert client.get("/api/v1/usage", headers={"X-API-Key": keys[names[3]][0]}).status_code == 401
    for key in keys[names[4]]:  # omitted: the key set stays
        assert usage_of(client, key)["tenant_id"] == names[4]
    assert [usage_of(client, k)["tenant_id"] for k in fresh] == [names[5], names[5]]
    for key in keys[names[5]]:
        assert client.get("/api/v1/usage", headers={"X-API-Key": key}).status_code == 401
    # The moved key only moved; tenant 3 lost its 3 keys, tenant 5 has 2 instead of 3.
    assert count_rows(database, "api_keys") == 3 * N - 3 - 1
    # Only the two tenants whose entitlement moved with the customer got a history row.
    assert sorted((r.tenant_id, r.plan) for r in new_changes) == [
        (names[0], "pro"),
        (names[1], "free"),
    ]
    assert total == N + 2 + 1  # + 1: the subscription event's change of tenant 1


def test_webhooks_during_a_large_sync_are_answered(
    app: Flask, client: FlaskClient, database: Database
) -> None:
    """Answer 2xx, never 503, to events arriving while a 10,000-tenant sync runs.

    On SQLite the sync holds the write lock, which writers wait for up to the 5 s busy
    timeout; on PostgreSQL the lock on all customers, which events wait for up to
    ``ALL_CUSTOMERS_WAIT_S`` (in attempts of the 2 s lock_timeout; see
    tests/test_sync_lock_wait.py). A sync that held it longer would make these events
    503. The events link some of the sync's own tenants to the customers the sync gives
    them.
    """
    keys = {f"tnt_busy_{i:05d}": [new_api_key() for _ in range(3)] for i in range(N)}
    outcomes: list[tuple[bool, int]] = []
    syncing = threading.Event()
    done = threading.Event()

    def deliver_webhooks() -> None:
        own_client = app.test_client()  # a client of its own: another thread
        for index in range(0, N, 7):
            if done.is_set():
                return
            sub = Subscription(customer=customer_of(index))
            for event in (
                sub.checkout(f"tnt_busy_{index:05d}", JAN[0]),
                Subscription().event("customer.subscription.created", "active", JAN, JAN[0]),
            ):
                body = se.render(event)
                during = syncing.is_set()
                response = own_client.post(
                    "/api/v1/billing/webhook",
                    data=body,
                    headers=se.delivery_headers(body, WEBHOOK_SECRET),
                )
                outcomes.append((during, response.status_code))

    payload = big_sync(keys)
    sender = threading.Thread(target=deliver_webhooks)
    sender.start()
    try:
        syncing.set()
        response = sync_tenants(client, payload)
        syncing.clear()
    finally:
        done.set()
        sender.join(timeout=60)
    assert response.status_code == 200, response.json
    assert any(during for during, _ in outcomes), "no event arrived during the sync"
    assert {status for _, status in outcomes} == {200}, outcomes
    assert count_rows(database, "tenants", "stripe_customer_id LIKE 'cus_Bulk%'") == N
    assert count_rows(database, "stripe_events", "outcome = 'failed'") == 0
