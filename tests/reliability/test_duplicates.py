"""Simultaneous copies of one event, on two instances sharing one database, apply once."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import text

from tests import stripe_events as se
from tests.helpers import count_rows
from tests.reliability.support import WEBHOOK_PATH, decode, signed
from tests.servers import http, running_service
from webhook_service.db import Database

COPIES = 12
NOW = int(time.time())
PERIOD = (se.add_months(NOW, -1) // 86400 * 86400, se.add_months(NOW, 1) // 86400 * 86400)


def checkout_creating_tenant(tenant_id: str, api_version: str) -> dict[str, Any]:
    """A checkout.session.completed for a tenant the service has not seen yet."""
    return se.checkout_completed_event(
        session_id=se.new_id("cs_test"),
        customer=se.new_id("cus"),
        subscription=se.new_id("sub"),
        created=NOW,
        api_version=api_version,
        client_reference_id=tenant_id,
    )


def subscription_creating_tenant(tenant_id: str, api_version: str) -> dict[str, Any]:
    """A customer.subscription.created linking a new tenant through metadata.tenant_id."""
    return se.subscription_event(
        "customer.subscription.created",
        sub_id=se.new_id("sub"),
        customer=se.new_id("cus"),
        status="active",
        period_start=PERIOD[0],
        period_end=PERIOD[1],
        created=NOW,
        api_version=api_version,
        metadata={"tenant_id": tenant_id},
    )


def send_copies(urls: list[str], body: bytes, headers: dict[str, str]) -> list[tuple[int, Any]]:
    """POST ``COPIES`` identical deliveries at the same moment, alternating between ``urls``."""
    barrier = threading.Barrier(COPIES)

    def send(index: int) -> tuple[int, Any]:
        barrier.wait(timeout=15)
        status, _, raw = http(
            "POST", urls[index % len(urls)] + WEBHOOK_PATH, body=body, headers=headers, timeout=30
        )
        return status, decode(raw)

    with ThreadPoolExecutor(COPIES) as pool:
        return list(pool.map(send, range(COPIES), timeout=60))


@pytest.mark.slow
def test_simultaneous_copies_on_two_instances_are_applied_once(
    env: dict[str, str], database: Database
) -> None:
    """Deliver each event 12 times at once to two gunicorns; log and apply it exactly once."""
    rounds = [
        (checkout_creating_tenant, se.LEGACY_API_VERSION),
        (subscription_creating_tenant, se.BASIL_API_VERSION),
        (checkout_creating_tenant, se.BASIL_API_VERSION),
        (subscription_creating_tenant, se.LEGACY_API_VERSION),
    ]
    with running_service(env, workers=2) as first, running_service(env, workers=2) as second:
        for index, (build, api_version) in enumerate(rounds):
            tenant_id = f"tnt_dup_{index}_{se.new_id('x', 8)[2:]}"
            event = build(tenant_id, api_version)
            body, headers = signed(event)
            results = send_copies([first, second], body, headers)

            statuses = Counter(status for status, _ in results)
            outcomes = Counter(answer.get("outcome") for _, answer in results)
            print(  # the figures of the issue, shown with -rP
                f"{event['type']} x{COPIES}: statuses {dict(statuses)}, outcomes {dict(outcomes)}"
            )
            assert statuses == {200: COPIES}, results
            assert outcomes == {"processed": 1, "duplicate": COPIES - 1}, results
            assert all(answer["event_id"] == event["id"] for _, answer in results)

            with database.transaction() as conn:
                rows = conn.execute(
                    text("SELECT outcome, attempts, tenant_id FROM stripe_events WHERE id = :id"),
                    {"id": event["id"]},
                ).all()
            assert [tuple(row) for row in rows] == [("processed", 1, tenant_id)]
            assert count_rows(database, "tenants", "id = :t", t=tenant_id) == 1
            customer = event["data"]["object"]["customer"]
            assert (
                count_rows(
                    database,
                    "tenants",
                    "id = :t AND stripe_customer_id = :c",
                    t=tenant_id,
                    c=customer,
                )
                == 1
            )
            assert count_rows(database, "tenant_changes", "event_id = :e", e=event["id"]) == 1
            if event["type"] == "customer.subscription.created":
                sub_id = event["data"]["object"]["id"]
                assert (
                    count_rows(
                        database,
                        "subscriptions",
                        "id = :s AND state_event_id = :e",
                        s=sub_id,
                        e=event["id"],
                    )
                    == 1
                )
    assert count_rows(database, "stripe_events") == len(rounds)
