"""The durable event log: once per event id, atomic with its effects, failures kept and retried.

Effects are observed in the tables the handlers write (``tenants``, ``tenant_changes``,
``subscriptions``), through a connection of their own: what they see is what was committed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select
from werkzeug.test import TestResponse

from tests import stripe_events as se
from tests.helpers import WEBHOOK_SECRET, count_rows
from webhook_service.db import Database
from webhook_service.models import stripe_events

WEBHOOK = "/api/v1/billing/webhook"
JAN_1 = 1735689600  # 2025-01-01T00:00:00Z
FEB_1 = 1738368000


def checkout_event(tenant_id: str, api_version: str = se.BASIL_API_VERSION) -> dict[str, Any]:
    """A completed subscription checkout that links a new tenant to a new customer."""
    return se.checkout_completed_event(
        session_id=se.new_id("cs_test"),
        customer=se.new_id("cus"),
        subscription=se.new_id("sub"),
        created=JAN_1 + 10,
        api_version=api_version,
        client_reference_id=tenant_id,
    )


def active_subscription_event(
    price_id: str, tenant_id: str, api_version: str = se.BASIL_API_VERSION
) -> dict[str, Any]:
    """An active subscription on ``price_id`` for a tenant named in its metadata."""
    return se.subscription_event(
        "customer.subscription.updated",
        sub_id=se.new_id("sub"),
        customer=se.new_id("cus"),
        status="active",
        period_start=JAN_1,
        period_end=FEB_1,
        created=JAN_1 + 60,
        api_version=api_version,
        price_id=price_id,
        metadata={"tenant_id": tenant_id},
    )


def event_row(database: Database, event_id: str) -> Any:
    with database.transaction() as conn:
        return conn.execute(
            select(stripe_events).where(stripe_events.c.id == event_id)
        ).one_or_none()


# --------------------------------------------------------------------------- once per id


def test_first_delivery_is_processed_and_logged(
    post_event: Callable[..., TestResponse], database: Database
) -> None:
    """Apply a checkout once and log it as processed with its tenant and raw payload."""
    event = checkout_event("tnt_first")
    response = post_event(event)
    assert response.status_code == 200
    assert response.json == {"received": True, "event_id": event["id"], "outcome": "processed"}
    row = event_row(database, event["id"])
    assert row.outcome == "processed"
    assert row.attempts == 1
    assert row.type == "checkout.session.completed"
    assert row.api_version == se.BASIL_API_VERSION
    assert row.created == JAN_1 + 10
    assert row.livemode is False
    assert row.tenant_id == "tnt_first"
    assert row.last_error is None
    assert row.processed_at is not None
    assert row.received_at is not None
    assert row.payload.encode("utf-8") == se.render(event)
    assert count_rows(database, "tenants", "id = 'tnt_first'") == 1
    assert count_rows(database, "tenant_changes", "tenant_id = 'tnt_first'") == 1


def test_unhandled_type_is_logged_as_ignored(
    post_event: Callable[..., TestResponse], database: Database
) -> None:
    """Log an event of a type without a handler as ignored, with no effect."""
    event = se.payment_intent_succeeded_event(
        customer=se.new_id("cus"), amount=1200, created=JAN_1, api_version=se.LEGACY_API_VERSION
    )
    response = post_event(event)
    assert response.status_code == 200
    assert response.json is not None
    assert response.json["outcome"] == "ignored"
    row = event_row(database, event["id"])
    assert (row.outcome, row.attempts) == ("ignored", 1)
    assert count_rows(database, "tenant_changes") == 0


@pytest.mark.parametrize("first_outcome", ["processed", "ignored"])
def test_redelivery_is_a_duplicate_without_a_second_effect(
    post_event: Callable[..., TestResponse], database: Database, first_outcome: str
) -> None:
    """Answer a redelivery (signed anew, as Stripe retries) as duplicate and apply nothing."""
    if first_outcome == "processed":
        event = checkout_event("tnt_dupe")
    else:
        event = se.event(
            "charge.refund.updated",
            {"id": se.new_id("re"), "object": "refund"},
            created=JAN_1,
            api_version=se.BASIL_API_VERSION,
        )
    first = post_event(event, timestamp=int(time.time()) - 60)
    assert first.json is not None
    assert first.json["outcome"] == first_outcome
    changes = count_rows(database, "tenant_changes")
    for _ in range(2):
        again = post_event(event)
        assert again.status_code == 200
        assert again.json == {"received": True, "event_id": event["id"], "outcome": "duplicate"}
    row = event_row(database, event["id"])
    assert (row.outcome, row.attempts) == (first_outcome, 1)
    assert count_rows(database, "stripe_events") == 1
    assert count_rows(database, "tenant_changes") == changes


def test_simultaneous_duplicates_apply_once(app: Flask, database: Database) -> None:
    """Process exactly one of ten copies posted at the same moment; the rest are duplicates."""
    copies = 10
    event = checkout_event("tnt_race")
    body = se.render(event)
    header = se.sign(body, WEBHOOK_SECRET)
    barrier = threading.Barrier(copies)

    def deliver(_: int) -> tuple[int, str]:
        client = app.test_client()  # one client (one connection) per thread
        barrier.wait(timeout=10)
        response = client.post(WEBHOOK, data=body, headers={"Stripe-Signature": header})
        assert response.json is not None, response.get_data(as_text=True)
        return response.status_code, str(response.json.get("outcome"))

    with ThreadPoolExecutor(copies) as pool:
        results = list(pool.map(deliver, range(copies)))
    assert all(status == 200 for status, _ in results), results
    outcomes = sorted(outcome for _, outcome in results)
    assert outcomes == ["duplicate"] * (copies - 1) + ["processed"]
    row = event_row(database, event["id"])
    assert (row.outcome, row.attempts) == ("processed", 1)
    assert count_rows(database, "tenants", "id = 'tnt_race'") == 1
    assert count_rows(database, "tenant_changes", "tenant_id = 'tnt_race'") == 1


# --------------------------------------------------------------------------- commit first


def test_2xx_is_sent_only_after_commit(app: Flask, database: Database) -> None:
    """See the event's row and its effect committed when the 200 leaves the application."""
    seen: list[tuple[str, Any, int]] = []
    inner = app.wsgi_app

    def observed(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        def start(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            # Another connection (the test's own engine) sees only committed rows.
            seen.append((status, event_row(database, event["id"]), count_rows(database, "tenants")))
            return start_response(status, headers, *exc_info)

        return inner(environ, start)

    app.wsgi_app = observed  # type: ignore[method-assign]
    event = checkout_event("tnt_commit")
    body = se.render(event)
    response = app.test_client().post(
        WEBHOOK, data=body, headers={"Stripe-Signature": se.sign(body, WEBHOOK_SECRET)}
    )
    assert response.status_code == 200
    [(status, row, tenant_rows)] = seen
    assert status.startswith("200 ")
    assert row is not None
    assert row.outcome == "processed"
    assert tenant_rows == 1


# --------------------------------------------------------------------------- failures


def write_catalog(path: Path, *prices: str) -> str:
    """A plan catalog (TOML) that sells ``prices`` as the plan "team"."""
    listed = ", ".join(f'"{price}"' for price in prices)
    path.write_text(
        'default_plan = "free"\n\n[plans.free]\nscans_per_month = 10\n\n'
        f"[plans.team]\nscans_per_month = 2000\nprices = [{listed}]\n",
        encoding="utf-8",
    )
    return str(path)


def test_failed_event_is_kept_and_processed_on_retry(
    post_event: Callable[..., TestResponse],
    make_app: Callable[..., Flask],
    database: Database,
    tmp_path: Path,
) -> None:
    """Keep a failing event as failed (500), then apply it when Stripe retries after a fix."""
    event = active_subscription_event("price_x", "tnt_retry")
    response = post_event(event)
    assert response.status_code == 500
    body = response.json
    assert body is not None
    assert body["error"] == "PROCESSING_FAILED"
    assert body["event_id"] == event["id"]
    assert "UNKNOWN_PRICE price_x" in body["message"]
    row = event_row(database, event["id"])
    assert (row.outcome, row.attempts) == ("failed", 1)
    assert row.last_error == "UNKNOWN_PRICE price_x"
    assert row.processed_at is None
    # Nothing of the failed attempt stays (the handler ran in a savepoint).
    assert count_rows(database, "subscriptions") == 0
    assert count_rows(database, "tenant_changes") == 0

    fixed = make_app(NAT_PLANS_FILE=write_catalog(tmp_path / "plans.toml", "price_x"))
    retry_body = se.render(event)
    retry = fixed.test_client().post(
        WEBHOOK, data=retry_body, headers={"Stripe-Signature": se.sign(retry_body, WEBHOOK_SECRET)}
    )
    assert retry.status_code == 200
    assert retry.json == {"received": True, "event_id": event["id"], "outcome": "processed"}
    row = event_row(database, event["id"])
    assert (row.outcome, row.attempts, row.last_error) == ("processed", 2, None)
    assert row.processed_at is not None
    assert count_rows(database, "subscriptions", "price_id = 'price_x'") == 1
    assert count_rows(database, "tenant_changes", "tenant_id = 'tnt_retry' AND plan = 'team'") == 1


def test_failed_event_fails_again_while_the_cause_remains(
    post_event: Callable[..., TestResponse], database: Database
) -> None:
    """Run a failed event again on redelivery and count the attempt."""
    event = active_subscription_event("price_x", "tnt_again")
    assert post_event(event).status_code == 500
    again = post_event(event)
    assert again.status_code == 500
    assert again.json is not None
    assert again.json["error"] == "PROCESSING_FAILED"
    row = event_row(database, event["id"])
    assert (row.outcome, row.attempts) == ("failed", 2)


@pytest.mark.parametrize("api_version", se.API_VERSIONS)
def test_field_missing_in_both_shapes_fails_naming_field_and_version(
    post_event: Callable[..., TestResponse], database: Database, api_version: str
) -> None:
    """Fail a subscription without current_period_start anywhere, naming it and the version."""
    event = active_subscription_event(se.DEFAULT_PRICE_ID, "tnt_missing", api_version)
    subscription = event["data"]["object"]
    subscription.pop("current_period_start", None)
    for item in subscription["items"]["data"]:
        item.pop("current_period_start", None)
    response = post_event(event)
    assert response.status_code == 500
    assert response.json is not None
    message = response.json["message"]
    assert "current_period_start" in message
    assert api_version in message
    row = event_row(database, event["id"])
    assert row.outcome == "failed"
    assert "current_period_start" in row.last_error
    assert api_version in row.last_error
    assert count_rows(database, "subscriptions") == 0


@pytest.mark.parametrize("api_version", se.API_VERSIONS)
def test_invoice_without_subscription_fails_naming_field_and_version(
    post_event: Callable[..., TestResponse], database: Database, api_version: str
) -> None:
    """Fail an invoice.paid that names its subscription in neither shape."""
    event = se.invoice_event(
        "invoice.paid",
        invoice_id=se.new_id("in"),
        sub_id=se.new_id("sub"),
        customer=se.new_id("cus"),
        period_start=JAN_1,
        period_end=FEB_1,
        created=JAN_1 + 3600,
        api_version=api_version,
        billing_reason="subscription_create",
    )
    invoice = event["data"]["object"]
    invoice.pop("subscription", None)
    invoice.pop("parent", None)
    response = post_event(event)
    assert response.status_code == 500
    row = event_row(database, event["id"])
    assert row.outcome == "failed"
    assert "subscription" in row.last_error
    assert api_version in row.last_error


def test_database_error_in_a_handler_fails_without_leaking_values(
    post_event: Callable[..., TestResponse], database: Database
) -> None:
    """Keep an event whose handler hit a database error as failed, naming no payload value."""
    event = active_subscription_event(se.DEFAULT_PRICE_ID, "tnt_overflow")
    for item in event["data"]["object"]["items"]["data"]:
        item["price"]["recurring"]["interval_count"] = 2**70  # more than any column holds
    customer = event["data"]["object"]["customer"]
    response = post_event(event)
    assert response.status_code == 500
    assert response.json is not None
    assert response.json["error"] == "PROCESSING_FAILED"
    row = event_row(database, event["id"])
    assert row.outcome == "failed"
    assert row.last_error
    for text in (response.json["message"], row.last_error):
        assert customer not in text
        assert "tnt_overflow" not in text
        assert "[SQL" not in text
        assert "parameters" not in text
