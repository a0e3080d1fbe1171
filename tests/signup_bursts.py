"""Signup bursts: the events Stripe sends for a new customer within milliseconds.

A burst is ``checkout.session.completed``, ``customer.subscription.created``,
``invoice.paid`` (``subscription_create``) and ``customer.subscription.updated`` of one
new customer, each carrying the tenant (``client_reference_id`` or ``metadata.tenant_id``
on the checkout, ``metadata.tenant_id`` on the subscription). Whatever order they arrive
in, the tenant ends linked to the customer on the pro plan, quantity 2 (the update is
the latest event): 1000 scans. Used by the signup race tests (tests/test_signup_races.py).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from tests import stripe_events as se
from tests.helpers import SYNC_KEY, WEBHOOK_SECRET, Subscription, new_api_key
from tests.servers import http
from webhook_service.db import Database
from webhook_service.models import stripe_events, tenant_changes, tenants

WEBHOOK = "/api/v1/billing/webhook"
SYNC = "/api/v1/tenants/sync"
QUANTITY = 2
EXPECTED_QUOTA = 500 * QUANTITY
DAY = 86400


@dataclass
class Burst:
    """The four first events of one new customer, for ``tenant_id``."""

    tenant_id: str
    api_version: str
    # The checkout names the tenant in client_reference_id (else in metadata.tenant_id).
    by_reference: bool = True
    known: bool = False  # the tenant was synced (without a customer) before the burst
    sub: Subscription = field(init=False)
    events: list[dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.sub = Subscription(
            api_version=self.api_version, metadata={"tenant_id": self.tenant_id}
        )
        now = int(time.time())
        # A period around the real clock: the servers under test read it.
        period = (now - DAY, now + 29 * DAY)
        created = now - 60
        if self.by_reference:
            checkout = self.sub.checkout(self.tenant_id, created)
        else:
            checkout = self.sub.checkout(None, created, metadata={"tenant_id": self.tenant_id})
        self.events = [
            checkout,
            self.sub.event("customer.subscription.created", "incomplete", period, created),
            self.sub.invoice(period, created + 1, billing_reason="subscription_create"),
            self.sub.event(
                "customer.subscription.updated", "active", period, created + 2, quantity=QUANTITY
            ),
        ]


def post_event(base: str, event: dict[str, Any], timeout: float = 30.0) -> tuple[int, str]:
    """Deliver one signed event; (status, outcome or error code or raw body)."""
    body = se.render(event)
    status, _, raw = http(
        "POST",
        base + WEBHOOK,
        body=body,
        headers=se.delivery_headers(body, WEBHOOK_SECRET),
        timeout=timeout,
    )
    try:
        answer = json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")[:200]
    return status, str(answer.get("outcome") or answer.get("error") or answer)


def sync(base: str, entries: list[dict[str, Any]]) -> None:
    status, _, raw = http(
        "POST",
        base + SYNC,
        body=json.dumps({"tenants": entries}).encode(),
        headers={"X-Sync-Key": SYNC_KEY, "Content-Type": "application/json"},
        timeout=30.0,
    )
    assert status == 200, raw


def fire(
    deliveries: Sequence[tuple[str, dict[str, Any]]], stagger_s: Sequence[float] | None = None
) -> list[tuple[int, str]]:
    """Post every (base URL, event) at once (after a barrier, each after its stagger)."""
    barrier = threading.Barrier(len(deliveries))

    def deliver(index: int) -> tuple[int, str]:
        barrier.wait(timeout=30)
        if stagger_s is not None and stagger_s[index] > 0:
            time.sleep(stagger_s[index])
        base, event = deliveries[index]
        return post_event(base, event)

    with ThreadPoolExecutor(len(deliveries)) as pool:
        return list(pool.map(deliver, range(len(deliveries))))


def check_bursts(base: str, database: Database, bursts: Sequence[Burst]) -> None:
    """Each burst left no failed event, its tenant linked, 1000 scans and a clean history."""
    event_ids = [event["id"] for burst in bursts for event in burst.events]
    with database.transaction() as conn:
        outcomes = dict(
            conn.execute(
                select(stripe_events.c.id, stripe_events.c.outcome).where(
                    stripe_events.c.id.in_(event_ids)
                )
            ).all()
        )
        links = dict(
            conn.execute(
                select(tenants.c.id, tenants.c.stripe_customer_id).where(
                    tenants.c.id.in_([b.tenant_id for b in bursts])
                )
            ).all()
        )
        changes = conn.execute(
            select(
                tenant_changes.c.tenant_id,
                tenant_changes.c.plan,
                tenant_changes.c.subscription_status,
                tenant_changes.c.scans_quota,
                tenant_changes.c.period_start,
                tenant_changes.c.quota_reset_date,
            )
            .where(tenant_changes.c.tenant_id.in_([b.tenant_id for b in bursts]))
            .order_by(tenant_changes.c.id)
        ).all()
    assert sorted(outcomes) == sorted(event_ids)
    assert {o for o in outcomes.values()} <= {"processed", "stale"}, outcomes
    assert links == {b.tenant_id: b.sub.customer for b in bursts}
    # Sync a key to each tenant (no customer: the webhook-made link stays), then ask.
    keys = {b.tenant_id: new_api_key() for b in bursts}
    sync(base, [{"tenant_id": t, "api_keys": [k]} for t, k in keys.items()])
    for burst in bursts:
        status, _, raw = http(
            "GET", base + "/api/v1/usage", headers={"X-API-Key": keys[burst.tenant_id]}
        )
        body = json.loads(raw)
        assert status == 200, body
        assert (body["plan"], body["subscription_status"], body["scans_quota"]) == (
            "pro",
            "active",
            EXPECTED_QUOTA,
        ), (burst.tenant_id, body)
        history = [tuple(row[1:]) for row in changes if row.tenant_id == burst.tenant_id]
        # Every row is a change: never the same state twice in a row; the last is now.
        assert all(a != b for a, b in itertools.pairwise(history)), history
        assert history[-1][:3] == ("pro", "active", EXPECTED_QUOTA), history
