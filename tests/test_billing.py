"""Checkout and portal sessions against a local stand-in for Stripe's API."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests import stripe_events as se
from tests.helpers import SYNC_KEY
from tests.stripe_stub import StripeStub
from webhook_service.billing.stripe_api import StripeGateway

API_KEY = "nat_pk_billing_tenant_key_0001"
OTHER_KEY = "nat_pk_billing_tenant_key_0002"
STRIPE_KEY = "sk_test_stub_51NatBilling"
URLS = {"success_url": "https://app.nat.test/ok", "cancel_url": "https://app.nat.test/cancel"}


@pytest.fixture
def env(env: dict[str, str], stripe_stub: StripeStub, tmp_path: Path) -> dict[str, str]:
    plans = tmp_path / "plans.toml"
    plans.write_text(
        'default_plan = "free"\n'
        "[plans.free]\nscans_per_month = 10\n"
        '[plans.pro]\nscans_per_month = 500\nprices = ["price_pro_monthly", "pro_yearly"]\n',
        encoding="utf-8",
    )
    return {
        **env,
        "STRIPE_API_KEY": STRIPE_KEY,
        "STRIPE_API_BASE": stripe_stub.base_url,
        "NAT_PLANS_FILE": str(plans),
    }


def sync(client: FlaskClient, *tenants: dict[str, Any]) -> None:
    response = client.post(
        "/api/v1/tenants/sync", json={"tenants": list(tenants)}, headers={"X-Sync-Key": SYNC_KEY}
    )
    assert response.status_code == 200, response.json


@pytest.fixture
def tenant(client: FlaskClient) -> str:
    sync(client, {"tenant_id": "tnt_bill", "api_keys": [API_KEY]})
    return "tnt_bill"


def checkout(client: FlaskClient, body: Any, key: str = API_KEY, **headers: str) -> TestResponse:
    return client.post("/api/v1/billing/checkout", json=body, headers={"X-API-Key": key, **headers})


def test_checkout_sends_stripe_the_subscription_session(
    client: FlaskClient, stripe_stub: StripeStub, tenant: str
) -> None:
    """Create a subscription-mode session carrying the tenant everywhere Stripe needs it."""
    response = checkout(client, {"price_id": "price_pro_monthly", **URLS})
    assert response.status_code == 200, response.json
    body = response.json
    assert body is not None
    assert set(body) == {"id", "url"}
    assert body["id"].startswith("cs_test_")
    assert body["url"] == f"https://checkout.stripe.com/c/pay/{body['id']}"
    [call] = stripe_stub.calls("POST", "/v1/checkout/sessions")
    assert call.params == {
        "mode": "subscription",
        "line_items[0][price]": "price_pro_monthly",
        "line_items[0][quantity]": "1",
        "success_url": URLS["success_url"],
        "cancel_url": URLS["cancel_url"],
        "client_reference_id": tenant,
        "metadata[tenant_id]": tenant,
        "subscription_data[metadata][tenant_id]": tenant,
    }
    assert call.headers["Authorization"] == f"Bearer {STRIPE_KEY}"
    assert call.headers["Idempotency-Key"].startswith("nat-checkout-")


def test_checkout_passes_the_known_customer(client: FlaskClient, stripe_stub: StripeStub) -> None:
    """Reuse the tenant's Stripe customer instead of letting Checkout create another."""
    sync(
        client,
        {"tenant_id": "tnt_known", "api_keys": [API_KEY], "stripe_customer_id": "cus_Known123"},
    )
    assert checkout(client, {"price_id": "price_pro_monthly", **URLS}).status_code == 200
    [call] = stripe_stub.calls("POST", "/v1/checkout/sessions")
    assert call.params["customer"] == "cus_Known123"


def test_checkout_retry_reuses_the_idempotency_key(
    client: FlaskClient, stripe_stub: StripeStub, tenant: str
) -> None:
    """Send the same Idempotency-Key to Stripe for a retried request, another for others."""
    body = {"price_id": "price_pro_monthly", **URLS}
    checkout(client, body)
    checkout(client, body)
    checkout(client, body, **{"Idempotency-Key": "click-1"})
    checkout(client, body, **{"Idempotency-Key": "click-1"})
    checkout(client, body, **{"Idempotency-Key": "click-2"})
    keys = [
        c.headers["Idempotency-Key"] for c in stripe_stub.calls("POST", "/v1/checkout/sessions")
    ]
    assert keys[0] == keys[1]
    assert keys[2] == keys[3]
    assert len({keys[0], keys[2], keys[4]}) == 3


def test_checkout_keys_differ_between_tenants(client: FlaskClient, stripe_stub: StripeStub) -> None:
    """Never share an idempotency key across tenants, even for the same client key."""
    sync(
        client,
        {"tenant_id": "tnt_a", "api_keys": [API_KEY]},
        {"tenant_id": "tnt_b", "api_keys": [OTHER_KEY]},
    )
    body = {"price_id": "price_pro_monthly", **URLS}
    checkout(client, body, API_KEY, **{"Idempotency-Key": "same"})
    checkout(client, body, OTHER_KEY, **{"Idempotency-Key": "same"})
    first, second = stripe_stub.calls("POST", "/v1/checkout/sessions")
    assert first.headers["Idempotency-Key"] != second.headers["Idempotency-Key"]


def test_unknown_price_is_refused_without_calling_stripe(
    client: FlaskClient, stripe_stub: StripeStub, tenant: str
) -> None:
    """Answer 400 UNKNOWN_PRICE for a price outside the catalog, and never call Stripe."""
    response = checkout(client, {"price_id": "price_free_lunch", **URLS})
    assert response.status_code == 400
    assert response.json == {
        "error": "UNKNOWN_PRICE",
        "message": "Price price_free_lunch is not in the plan catalog.",
        "status": 400,
    }
    assert stripe_stub.requests == []


def test_lookup_key_is_resolved_through_stripe(
    client: FlaskClient, stripe_stub: StripeStub, tenant: str
) -> None:
    """Resolve a catalog lookup key to its active price before opening the session."""
    stripe_stub.prices["pro_yearly"] = "price_1ProYearlyResolved"
    response = checkout(client, {"price_id": "pro_yearly", **URLS})
    assert response.status_code == 200, response.json
    [lookup] = stripe_stub.calls("GET", "/v1/prices")
    assert lookup.params["lookup_keys[0]"] == "pro_yearly"
    assert lookup.params["active"] == "true"
    [call] = stripe_stub.calls("POST", "/v1/checkout/sessions")
    assert call.params["line_items[0][price]"] == "price_1ProYearlyResolved"


def test_lookup_key_without_a_stripe_price_is_unknown(
    client: FlaskClient, stripe_stub: StripeStub, tenant: str
) -> None:
    """Answer 400 UNKNOWN_PRICE when Stripe has no active price for a catalog lookup key."""
    response = checkout(client, {"price_id": "pro_yearly", **URLS})
    assert response.status_code == 400
    assert response.json is not None
    assert response.json["error"] == "UNKNOWN_PRICE"
    assert stripe_stub.calls("POST", "/v1/checkout/sessions") == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**URLS}, "price_id"),
        ({"price_id": "price_pro_monthly", "cancel_url": URLS["cancel_url"]}, "success_url"),
        ({"price_id": "price_pro_monthly", **URLS, "cancel_url": "/relative"}, "cancel_url"),
        (
            {"price_id": "price_pro_monthly", **URLS, "success_url": "javascript:alert(1)"},
            "success_url",
        ),
        ({"price_id": "price_pro_monthly", **URLS, "success_url": "ftp://x.test/"}, "success_url"),
        ({"price_id": 7, **URLS}, "price_id"),
    ],
)
def test_checkout_validates_its_body(
    client: FlaskClient, stripe_stub: StripeStub, tenant: str, body: dict[str, Any], field: str
) -> None:
    """Refuse missing fields and non-absolute or non-http URLs with INVALID_REQUEST."""
    response = checkout(client, body)
    assert response.status_code == 400
    assert response.json is not None
    assert response.json["error"] == "INVALID_REQUEST"
    assert field in response.json["message"]
    assert stripe_stub.requests == []


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1, 2]", b'"string"'])
def test_checkout_refuses_bodies_that_are_not_objects(
    client: FlaskClient, stripe_stub: StripeStub, tenant: str, raw: bytes
) -> None:
    """Answer 400 INVALID_REQUEST to a missing or non-object body."""
    response = client.post(
        "/api/v1/billing/checkout",
        data=raw,
        headers={"X-API-Key": API_KEY, "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json == {
        "error": "INVALID_REQUEST",
        "message": "The body must be a JSON object.",
        "status": 400,
    }


@pytest.mark.parametrize(
    ("status", "error", "expected_status", "expected_code", "calls"),
    [
        (
            400,
            {
                "type": "invalid_request_error",
                "message": "No such price: 'price_pro_monthly'",
                "param": "line_items[0][price]",
                "code": "resource_missing",
            },
            400,
            "STRIPE_ERROR",
            1,
        ),
        (
            402,
            {"type": "card_error", "message": "Your card was declined.", "code": "card_declined"},
            400,
            "STRIPE_ERROR",
            1,
        ),
        (
            429,
            {"type": "invalid_request_error", "message": "Too many requests", "code": "rate_limit"},
            503,
            "STRIPE_UNAVAILABLE",
            1,
        ),
        (
            500,
            {"type": "api_error", "message": "Something went wrong on Stripe's end."},
            503,
            "STRIPE_UNAVAILABLE",
            2,
        ),
        (
            401,
            {"type": "invalid_request_error", "message": "Invalid API Key provided: sk_test_***"},
            503,
            "STRIPE_UNAVAILABLE",
            1,
        ),
    ],
)
def test_stripe_errors_map_to_clear_json(
    client: FlaskClient,
    stripe_stub: StripeStub,
    tenant: str,
    status: int,
    error: dict[str, Any],
    expected_status: int,
    expected_code: str,
    calls: int,
) -> None:
    """Map Stripe's errors: request and card errors 400 with Stripe's words, outages 503."""
    for _ in range(2):  # the SDK retries a 5xx once (a 429 only when Stripe says so)
        stripe_stub.respond("POST", "/v1/checkout/sessions", status, {"error": error})
    response = checkout(client, {"price_id": "price_pro_monthly", **URLS})
    assert response.status_code == expected_status
    body = response.json
    assert body is not None
    assert body["error"] == expected_code
    assert body["status"] == expected_status
    if expected_code == "STRIPE_ERROR":
        assert body["message"] == error["message"]
    assert "sk_test" not in response.get_data(as_text=True)
    assert len(stripe_stub.calls("POST", "/v1/checkout/sessions")) == calls


def test_stripe_timeout_is_a_503(
    app: Flask, client: FlaskClient, stripe_stub: StripeStub, tenant: str
) -> None:
    """Answer 503 STRIPE_UNAVAILABLE when Stripe does not answer within the timeout."""
    app.extensions["nat"].stripe = StripeGateway(STRIPE_KEY, stripe_stub.base_url, read_timeout=0.3)
    for _ in range(2):
        stripe_stub.respond("POST", "/v1/checkout/sessions", 200, {"id": "cs_late"}, delay=1.0)
    started = time.monotonic()
    response = checkout(client, {"price_id": "price_pro_monthly", **URLS})
    assert response.status_code == 503
    assert response.json is not None
    assert response.json["error"] == "STRIPE_UNAVAILABLE"
    assert time.monotonic() - started < 5


def test_portal_opens_a_session_for_the_customer(
    client: FlaskClient, stripe_stub: StripeStub
) -> None:
    """Create a billing portal session for the tenant's customer."""
    sync(client, {"tenant_id": "tnt_p", "api_keys": [API_KEY], "stripe_customer_id": "cus_Portal1"})
    response = client.post(
        "/api/v1/billing/portal",
        json={"return_url": "https://app.nat.test/account"},
        headers={"X-API-Key": API_KEY},
    )
    assert response.status_code == 200, response.json
    assert response.json is not None
    assert set(response.json) == {"url"}
    assert response.json["url"].startswith("https://billing.stripe.com/p/session/")
    [call] = stripe_stub.calls("POST", "/v1/billing_portal/sessions")
    assert call.params == {"customer": "cus_Portal1", "return_url": "https://app.nat.test/account"}


def test_portal_without_a_customer_is_a_conflict(
    client: FlaskClient, stripe_stub: StripeStub, tenant: str
) -> None:
    """Answer 409 NO_BILLING_ACCOUNT to a tenant that never subscribed."""
    response = client.post(
        "/api/v1/billing/portal",
        json={"return_url": "https://app.nat.test/account"},
        headers={"X-API-Key": API_KEY},
    )
    assert response.status_code == 409
    assert response.json is not None
    assert response.json["error"] == "NO_BILLING_ACCOUNT"
    assert stripe_stub.requests == []


def test_portal_validates_the_return_url(
    client: FlaskClient, stripe_stub: StripeStub, tenant: str
) -> None:
    """Refuse a missing or relative return_url."""
    for body in ({}, {"return_url": "/account"}):
        response = client.post("/api/v1/billing/portal", json=body, headers={"X-API-Key": API_KEY})
        assert response.status_code == 400
        assert response.json is not None
        assert response.json["error"] == "INVALID_REQUEST"


@pytest.mark.parametrize("path", ["/api/v1/billing/checkout", "/api/v1/billing/portal"])
def test_billing_needs_an_api_key(client: FlaskClient, stripe_stub: StripeStub, path: str) -> None:
    """Answer 401 INVALID_API_KEY without a valid tenant key."""
    response = client.post(path, json={"price_id": "price_pro_monthly", **URLS})
    assert response.status_code == 401
    assert response.json is not None
    assert response.json["error"] == "INVALID_API_KEY"
    assert stripe_stub.requests == []


@pytest.mark.parametrize("path", ["/api/v1/billing/checkout", "/api/v1/billing/portal"])
def test_billing_not_configured(env: dict[str, str], path: str, stripe_stub: StripeStub) -> None:
    """Answer 503 BILLING_NOT_CONFIGURED for both endpoints without STRIPE_API_KEY."""
    from webhook_service.web.app import create_app

    env = {k: v for k, v in env.items() if k != "STRIPE_API_KEY"}
    app = create_app(env)
    client = app.test_client()
    sync(client, {"tenant_id": "tnt_nc", "api_keys": [API_KEY], "stripe_customer_id": "cus_Nc1"})
    response = client.post(
        path,
        json={"price_id": "price_pro_monthly", "return_url": "https://a.test/", **URLS},
        headers={"X-API-Key": API_KEY},
    )
    app.extensions["nat"].database.dispose()
    assert response.status_code == 503
    assert response.json == {
        "error": "BILLING_NOT_CONFIGURED",
        "message": "STRIPE_API_KEY is not configured; checkout and portal are unavailable.",
        "status": 503,
    }
    assert stripe_stub.requests == []


@pytest.mark.parametrize("api_version", se.API_VERSIONS)
def test_checkout_to_plan_full_loop(
    client: FlaskClient,
    stripe_stub: StripeStub,
    tenant: str,
    post_event: Callable[..., TestResponse],
    api_version: str,
) -> None:
    """Checkout, then the events a real checkout produces, then usage shows the plan."""
    response = checkout(client, {"price_id": "price_pro_monthly", **URLS})
    assert response.status_code == 200
    assert response.json is not None
    session_id = response.json["id"]
    [call] = stripe_stub.calls("POST", "/v1/checkout/sessions")
    now = int(time.time())
    start, end = now - 60, now + 30 * 86400
    customer, sub = "cus_FullLoop01", "sub_FullLoop01"
    metadata = {"tenant_id": call.params["subscription_data[metadata][tenant_id]"]}
    events = [
        se.subscription_event(
            "customer.subscription.created",
            sub_id=sub,
            customer=customer,
            status="incomplete",
            period_start=start,
            period_end=end,
            created=now - 5,
            api_version=api_version,
            metadata=metadata,
        ),
        se.subscription_event(
            "customer.subscription.updated",
            sub_id=sub,
            customer=customer,
            status="active",
            period_start=start,
            period_end=end,
            created=now - 3,
            api_version=api_version,
            metadata=metadata,
            previous={"status": "incomplete"},
        ),
        se.checkout_completed_event(
            session_id=session_id,
            customer=customer,
            subscription=sub,
            client_reference_id=call.params["client_reference_id"],
            created=now - 2,
            api_version=api_version,
        ),
    ]
    for event in events:
        delivered = post_event(event)
        assert delivered.status_code == 200, delivered.json
    usage = client.get("/api/v1/usage", headers={"X-API-Key": API_KEY})
    assert usage.status_code == 200
    assert usage.json is not None
    assert usage.json["plan"] == "pro"
    assert usage.json["subscription_status"] == "active"
    assert usage.json["scans_quota"] == 500
    portal = client.post(
        "/api/v1/billing/portal",
        json={"return_url": "https://app.nat.test/account"},
        headers={"X-API-Key": API_KEY},
    )
    assert portal.status_code == 200
    assert (
        stripe_stub.calls("POST", "/v1/billing_portal/sessions")[0].params["customer"] == customer
    )
