"""Subscription and invoice payloads: both shapes, several items, fields missing in both."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import text
from werkzeug.test import TestResponse

from tests import stripe_events as se
from tests.helpers import Clock, Subscription, count_rows, usage_of, utc
from webhook_service.db import Database

JAN = (utc(2025, 1, 1), utc(2025, 2, 1))
FEB = (utc(2025, 2, 1), utc(2025, 3, 1))


def failed_with(response: TestResponse, database: Database, event: dict[str, Any]) -> str:
    """Check the 500 PROCESSING_FAILED answer and the failed log row; return last_error."""
    assert response.status_code == 500
    assert (response.json["error"], response.json["event_id"]) == (
        "PROCESSING_FAILED",
        event["id"],
    )
    with database.transaction() as conn:
        row = conn.execute(
            text("SELECT outcome, last_error FROM stripe_events WHERE id = :id"),
            {"id": event["id"]},
        ).one()
    assert row.outcome == "failed"
    error: str = row.last_error
    assert error in response.json["message"]
    return error


@pytest.mark.parametrize("api_version", se.API_VERSIONS)
def test_period_missing_in_both_shapes_fails_naming_field_and_version(
    api_version: str,
    post_event: Callable[..., TestResponse],
    make_tenant: Callable[..., str],
    database: Database,
) -> None:
    """Fail the event, never a silent null, when no shape carries the period."""
    sub = Subscription(api_version=api_version)
    make_tenant("tnt_no_period", customer=sub.customer)
    event = sub.event("customer.subscription.updated", "active", JAN, JAN[0])
    obj = event["data"]["object"]
    obj.pop("current_period_start", None)
    for item in obj["items"]["data"]:
        item.pop("current_period_start", None)
    error = failed_with(post_event(event), database, event)
    assert error == (
        "customer.subscription.updated: field current_period_start is missing in both "
        f"payload shapes (api_version {api_version})"
    )


@pytest.mark.parametrize("api_version", se.API_VERSIONS)
def test_invoice_without_its_subscription_fails_naming_both_fields(
    api_version: str, post_event: Callable[..., TestResponse], database: Database
) -> None:
    """Fail an invoice.paid whose subscription is named in neither shape."""
    sub = Subscription(api_version=api_version)
    event = sub.invoice(FEB, FEB[0] + 3600)
    obj = event["data"]["object"]
    obj.pop("subscription", None)
    obj.pop("parent", None)
    error = failed_with(post_event(event), database, event)
    assert error.startswith("invoice.paid: field subscription (parent.subscription_details")
    assert f"(api_version {api_version})" in error


def test_basil_period_is_read_from_the_items_only(
    client: FlaskClient,
    clock: Clock,
    post_event: Callable[..., TestResponse],
    make_tenant: Callable[..., str],
) -> None:
    """Read a basil subscription's period from items.data[], where basil puts it."""
    sub = Subscription(api_version=se.BASIL_API_VERSION)
    key = make_tenant("tnt_basil_items", customer=sub.customer)
    event = sub.event("customer.subscription.created", "active", FEB, FEB[0])
    assert "current_period_start" not in event["data"]["object"]
    assert post_event(event).json["outcome"] == "processed"
    usage = usage_of(client, key)
    assert (usage["period_start"], usage["quota_reset_date"]) == (
        "2025-02-01T00:00:00Z",
        "2025-03-01T00:00:00Z",
    )


@pytest.mark.parametrize("api_version", se.API_VERSIONS)
def test_the_item_the_catalog_sells_decides_plan_and_quantity(
    api_version: str,
    client: FlaskClient,
    clock: Clock,
    post_event: Callable[..., TestResponse],
    make_tenant: Callable[..., str],
) -> None:
    """Grant the catalog item's plan times its quantity, whatever other items come first."""
    sub = Subscription(api_version=api_version)
    key = make_tenant("tnt_addon", customer=sub.customer)
    event = sub.event("customer.subscription.created", "active", JAN, JAN[0], quantity=2)
    items = event["data"]["object"]["items"]["data"]
    addon = copy.deepcopy(items[0])
    addon["id"] = "si_AddOnItem00001"
    addon["quantity"] = 7
    for price in (addon["price"], addon["plan"]):
        price["id"] = "price_1SupportAddOn0"
    items.insert(0, addon)
    assert post_event(event).json["outcome"] == "processed"
    usage = usage_of(client, key)
    assert (usage["plan"], usage["scans_quota"]) == ("pro", 1000)


def test_proration_invoices_do_not_move_the_period(
    client: FlaskClient,
    clock: Clock,
    post_event: Callable[..., TestResponse],
    make_tenant: Callable[..., str],
    database: Database,
) -> None:
    """Ignore the period of an invoice.paid that is not a create or cycle invoice."""
    sub = Subscription()
    key = make_tenant("tnt_proration", customer=sub.customer)
    created = sub.event("customer.subscription.created", "active", JAN, JAN[0])
    assert post_event(created).json["outcome"] == "processed"
    proration = sub.invoice(FEB, JAN[0] + 86400, billing_reason="subscription_update")
    manual = sub.invoice(FEB, JAN[0] + 86400, billing_reason="manual")
    for event in (proration, manual):
        assert post_event(event).json["outcome"] == "processed"
    assert usage_of(client, key)["period_start"] == "2025-01-01T00:00:00Z"
    assert count_rows(database, "tenant_changes", "tenant_id = 'tnt_proration'") == 2


@pytest.mark.parametrize("reason", [{"x": 1}, ["subscription_cycle"], 7, None])
def test_an_invoice_whose_billing_reason_is_not_a_string_moves_nothing(
    reason: object,
    client: FlaskClient,
    post_event: Callable[..., TestResponse],
    make_tenant: Callable[..., str],
) -> None:
    """Treat a billing_reason that is not a string as no create or cycle invoice (200, no
    period move), never as a handler crash (found by the hostile-input fuzz test)."""
    sub = Subscription()
    key = make_tenant("tnt_odd_reason", customer=sub.customer)
    created = sub.event("customer.subscription.created", "active", JAN, JAN[0])
    assert post_event(created).json["outcome"] == "processed"
    invoice = sub.invoice(FEB, JAN[0] + 86400)
    invoice["data"]["object"]["billing_reason"] = reason
    response = post_event(invoice)
    assert response.status_code == 200, response.json
    assert response.json["outcome"] == "processed"
    assert usage_of(client, key)["period_start"] == "2025-01-01T00:00:00Z"


def test_quantity_zero_grants_zero_scans(
    post_event: Callable[..., TestResponse],
    make_tenant: Callable[..., str],
    client: FlaskClient,
    clock: Clock,
) -> None:
    """Multiply the plan by the item quantity, zero included (SPEC: scans x quantity)."""
    clock.set(JAN[0] + 3600)
    sub = Subscription()
    key = make_tenant("tnt_zero_qty", customer=sub.customer)
    assert (
        post_event(
            sub.event("customer.subscription.created", "active", JAN, JAN[0], quantity=0)
        ).status_code
        == 200
    )
    body = usage_of(client, key)
    assert (body["plan"], body["scans_quota"], body["scans_remaining"]) == ("pro", 0, 0)


@pytest.mark.parametrize("quantity", [-1, 2**70, "3"])
def test_quantity_out_of_range_fails_the_event(
    quantity: object,
    post_event: Callable[..., TestResponse],
    make_tenant: Callable[..., str],
    database: Database,
) -> None:
    """Fail, naming the quantity, instead of storing a value no column or quota can hold."""
    sub = Subscription()
    make_tenant("tnt_bad_qty", customer=sub.customer)
    event = sub.event("customer.subscription.created", "active", JAN, JAN[0])
    event["data"]["object"]["items"]["data"][0]["quantity"] = quantity
    error = failed_with(post_event(event), database, event)
    assert error.startswith("customer.subscription.created: quantity ")
    assert "is not an integer from 0 to 1000000" in error
    assert count_rows(database, "subscriptions", "status IS NOT NULL") == 0
