"""Duplicates across processes: two gunicorn instances on one database.

The copies of an event are posted at the same moment to both instances; whatever the
backend (SQLite file in WAL mode, or PostgreSQL), exactly one applies it.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests import stripe_events as se
from tests.helpers import WEBHOOK_SECRET, count_rows
from tests.servers import http, running_services
from webhook_service.db import Database

pytestmark = pytest.mark.slow

WEBHOOK = "/api/v1/billing/webhook"
COPIES = 12
JAN_1 = 1735689600


def race(bases: list[str], event: dict[str, Any]) -> list[tuple[int, str]]:
    """Post ``COPIES`` copies of ``event`` at once, alternating between ``bases``."""
    body = se.render(event)
    header = se.sign(body, WEBHOOK_SECRET)
    barrier = threading.Barrier(COPIES)

    def deliver(index: int) -> tuple[int, str]:
        barrier.wait(timeout=10)
        status, _, raw = http(
            "POST",
            bases[index % len(bases)] + WEBHOOK,
            body=body,
            headers={"Content-Type": "application/json", "Stripe-Signature": header},
        )
        answer = json.loads(raw)
        return status, str(answer.get("outcome", answer.get("error")))

    with ThreadPoolExecutor(COPIES) as pool:
        return list(pool.map(deliver, range(COPIES)))


def test_two_instances_apply_a_duplicate_once(database: Database) -> None:
    """Apply each event once when copies hit two instances sharing the database together."""
    env = {"DATABASE_URL": database.url, "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET}
    customer = se.new_id("cus")
    checkout = se.checkout_completed_event(
        session_id=se.new_id("cs_test"),
        customer=customer,
        subscription=se.new_id("sub"),
        created=JAN_1 + 5,
        api_version=se.BASIL_API_VERSION,
        client_reference_id="tnt_two_instances",
    )
    subscription = se.subscription_event(
        "customer.subscription.created",
        sub_id=se.new_id("sub"),
        customer=customer,
        status="active",
        period_start=JAN_1,
        period_end=JAN_1 + 31 * 86400,
        created=JAN_1 + 10,
        api_version=se.LEGACY_API_VERSION,
    )
    # One worker each: every pair of simultaneous copies is a pair of processes.
    with running_services(env, 2, workers=1) as bases:
        for event in (checkout, subscription):
            results = race(bases, event)
            assert all(status == 200 for status, _ in results), results
            outcomes = sorted(outcome for _, outcome in results)
            assert outcomes == ["duplicate"] * (COPIES - 1) + ["processed"], outcomes

    for event in (checkout, subscription):
        assert (
            count_rows(
                database,
                "stripe_events",
                "id = :id AND outcome = 'processed' AND attempts = 1",
                id=event["id"],
            )
            == 1
        )
    assert count_rows(database, "stripe_events") == 2
    assert count_rows(database, "tenants", "id = 'tnt_two_instances'") == 1
    # One change for the checkout (tenant created) and one for the subscription (pro).
    assert count_rows(database, "tenant_changes", "tenant_id = 'tnt_two_instances'") == 2
    assert count_rows(database, "subscriptions", "state_event_id = :id", id=subscription["id"]) == 1
