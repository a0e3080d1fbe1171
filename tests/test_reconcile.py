"""`webhook-service events reconcile` against a local stand-in for Stripe's events API."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from werkzeug.test import TestResponse

from tests import stripe_events as se
from tests.conftest import count_rows
from tests.stripe_stub import StripeStub, running_stripe_stub
from webhook_service.cli import cli
from webhook_service.db import Database
from webhook_service.handlers import build_router


@pytest.fixture
def stripe_stub() -> Iterator[StripeStub]:
    with running_stripe_stub() as stub:
        yield stub


@pytest.fixture
def env(env: dict[str, str], stripe_stub: StripeStub) -> dict[str, str]:
    return {
        **env,
        "STRIPE_API_KEY": "sk_test_stub_reconcile",
        "STRIPE_API_BASE": stripe_stub.base_url,
    }


def as_listed(event: dict[str, Any]) -> dict[str, Any]:
    """An event as the events API returns it (a JSON round trip of the webhook body)."""
    loaded: dict[str, Any] = json.loads(se.render(event))
    return loaded


def history(now: int) -> list[dict[str, Any]]:
    """A checkout, a subscription that will be logged already, one that fails, many invoices."""
    start, end = now - 3600, now + 30 * 86400
    api = se.BASIL_API_VERSION
    events = [
        se.checkout_completed_event(
            session_id="cs_rec_1",
            customer="cus_Rec1",
            subscription="sub_Rec1",
            client_reference_id="tnt_rec",
            created=now - 900,
            api_version=api,
        ),
        se.subscription_event(
            "customer.subscription.created",
            sub_id="sub_Rec1",
            customer="cus_Rec1",
            status="active",
            period_start=start,
            period_end=end,
            created=now - 800,
            api_version=api,
        ),
        se.subscription_event(
            "customer.subscription.updated",
            sub_id="sub_Rec2",
            customer="cus_Rec2",
            status="active",
            price_id="price_not_in_catalog",
            metadata={"tenant_id": "tnt_rec2"},
            period_start=start,
            period_end=end,
            created=now - 700,
            api_version=api,
        ),
    ]
    for index in range(230):
        events.append(
            se.invoice_event(
                "invoice.payment_failed",
                invoice_id=f"in_Rec{index:04d}",
                sub_id="sub_Rec1",
                customer="cus_Rec1",
                period_start=start,
                period_end=end,
                created=now - 600 + index,
                api_version=api,
            )
        )
    return [as_listed(e) for e in events]


def test_reconcile_applies_missed_events_once(
    runner: CliRunner,
    stripe_stub: StripeStub,
    database: Database,
    post_event: Callable[..., TestResponse],
) -> None:
    """Page through Stripe's events oldest first: new applied, logged ones duplicate."""
    now = int(time.time())
    events = history(now)
    assert post_event(events[1]).status_code == 200  # this one was delivered
    stripe_stub.events = list(reversed(events))  # Stripe lists newest first
    stripe_stub.events.insert(
        0,
        as_listed(
            se.event(
                "charge.succeeded",
                {"id": "ch_1", "object": "charge"},
                created=now - 10,
                api_version=se.BASIL_API_VERSION,
            )
        ),
    )

    result = runner.invoke(cli, ["events", "reconcile", "--since", "3d"])

    assert result.exit_code == 1, result.output
    assert "fetched 233, new 231, duplicate 1, failed 1 (231 processed)" in result.output
    assert "UNKNOWN_PRICE price_not_in_catalog" in result.output
    pages = stripe_stub.calls("GET", "/v1/events")
    assert len(pages) == 3
    asked_types = {v for k, v in pages[0].params.items() if k.startswith("types[")}
    assert asked_types == set(build_router().event_types)
    assert int(pages[0].params["created[gte]"]) == pytest.approx(now - 3 * 86400, abs=5)
    assert pages[1].params["starting_after"] == stripe_stub.events[100]["id"]
    assert count_rows(database, "stripe_events") == 233
    assert count_rows(database, "stripe_events", "outcome = 'failed'") == 1
    assert count_rows(database, "stripe_events", "attempts > 1") == 0
    assert (
        count_rows(database, "tenants", "id = 'tnt_rec' AND stripe_customer_id = 'cus_Rec1'") == 1
    )

    again = runner.invoke(cli, ["events", "reconcile", "--since", "3d"])
    assert again.exit_code == 1  # the failing event is still failing, and is run again
    assert "fetched 233, new 0, duplicate 232, failed 1" in again.output
    assert count_rows(database, "stripe_events") == 233


def test_reconcile_applies_in_created_order(
    runner: CliRunner, stripe_stub: StripeStub, database: Database
) -> None:
    """Apply an older subscription event before a newer one, so none ends up stale."""
    now = int(time.time())
    start, end = now - 3600, now + 30 * 86400
    older = se.subscription_event(
        "customer.subscription.created",
        sub_id="sub_Ord",
        customer="cus_Ord",
        status="incomplete",
        period_start=start,
        period_end=end,
        created=now - 100,
        api_version=se.LEGACY_API_VERSION,
    )
    newer = se.subscription_event(
        "customer.subscription.updated",
        sub_id="sub_Ord",
        customer="cus_Ord",
        status="active",
        period_start=start,
        period_end=end,
        created=now - 50,
        api_version=se.LEGACY_API_VERSION,
        previous={"status": "incomplete"},
    )
    stripe_stub.events = [as_listed(newer), as_listed(older)]
    result = runner.invoke(cli, ["events", "reconcile"])
    assert result.exit_code == 0, result.output
    assert "(2 processed)" in result.output
    assert count_rows(database, "subscriptions", "id = 'sub_Ord' AND status = 'active'") == 1


def test_reconcile_dry_run_changes_nothing(
    runner: CliRunner,
    stripe_stub: StripeStub,
    database: Database,
    post_event: Callable[..., TestResponse],
) -> None:
    """List what would be applied without logging or applying anything."""
    events = history(int(time.time()))[:3]
    assert post_event(events[1]).status_code == 200
    stripe_stub.events = list(reversed(events))
    result = runner.invoke(cli, ["events", "reconcile", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "dry run: fetched 3, new 2, duplicate 1, failed 0" in result.output
    assert f"{events[0]['id']}  checkout.session.completed  would be applied" in result.output
    assert count_rows(database, "stripe_events") == 1
    assert count_rows(database, "tenants") == 0


def test_reconcile_warns_past_the_retention_window(
    runner: CliRunner, stripe_stub: StripeStub, database: Database
) -> None:
    """Warn that Stripe keeps events for 30 days when --since reaches further."""
    result = runner.invoke(cli, ["events", "reconcile", "--since", "45d"])
    assert result.exit_code == 0, result.output
    assert "reaches past Stripe's 30-day event retention" in result.output
    assert "fetched 0, new 0, duplicate 0, failed 0" in result.output


def test_reconcile_needs_an_api_key(
    runner: CliRunner, env: dict[str, str], database: Database
) -> None:
    """Refuse to run without STRIPE_API_KEY."""
    runner.env = {**env, "STRIPE_API_KEY": ""}
    result = runner.invoke(cli, ["events", "reconcile"])
    assert result.exit_code == 2
    assert "STRIPE_API_KEY is not set" in result.output


def test_reconcile_stops_cleanly_when_stripe_fails(
    runner: CliRunner, stripe_stub: StripeStub, database: Database
) -> None:
    """Exit non-zero with one clear line when Stripe's API is failing."""
    for _ in range(2):
        stripe_stub.respond(
            "GET", "/v1/events", 500, {"error": {"type": "api_error", "message": "boom"}}
        )
    result = runner.invoke(cli, ["events", "reconcile"])
    assert result.exit_code == 1
    assert (
        "reconciliation stopped: Stripe answered with a server error (HTTP 500). Retry later."
        in result.output
    )
