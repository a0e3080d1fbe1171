"""Checkout and portal when Stripe misbehaves: one deadline per request, a cap on the
requests waiting on Stripe, and an accurate 503 for each kind of bad answer."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests import stripe_events as se
from tests import test_billing
from tests.helpers import SYNC_KEY, WEBHOOK_SECRET, wait_for
from tests.reliability.support import deliver
from tests.servers import closed_port, http, running_service
from tests.stripe_stub import StripeStub, running_stripe_stub
from tests.test_billing import API_KEY, STRIPE_KEY, URLS, checkout, sync
from webhook_service.db import Database

# The billing tests' fixtures: the app configured for the Stripe stand-in (conftest), a tenant.
env = test_billing.env
tenant = test_billing.tenant

PORTAL = "/api/v1/billing/portal"
CHECKOUT_SESSIONS = "/v1/checkout/sessions"
PORTAL_SESSIONS = "/v1/billing_portal/sessions"


def webhook_event() -> dict[str, Any]:
    return se.customer_deleted_event(
        customer=se.new_id("cus"), created=int(time.time()), api_version=se.BASIL_API_VERSION
    )


def portal(client: FlaskClient) -> TestResponse:
    return client.post(
        PORTAL, json={"return_url": "https://app.nat.test/account"}, headers={"X-API-Key": API_KEY}
    )


@pytest.fixture
def customer(client: FlaskClient) -> str:
    sync(client, {"tenant_id": "tnt_faults", "api_keys": [API_KEY], "stripe_customer_id": "cus_F1"})
    return "cus_F1"


def unavailable(response: TestResponse) -> str:
    """The message of a 503 STRIPE_UNAVAILABLE (asserted)."""
    assert response.status_code == 503, response.json
    body = response.json
    assert body is not None
    assert body["error"] == "STRIPE_UNAVAILABLE"
    assert body["status"] == 503
    message: str = body["message"]
    return message


# --------------------------------------------------------------------------- 12.4 deadline


def test_lookup_key_checkout_ends_within_one_deadline(
    make_app: Callable[..., Flask], stripe_stub: StripeStub
) -> None:
    """Both calls of a checkout by lookup key share one deadline (retries included)."""
    client = make_app(STRIPE_DEADLINE_SECONDS="2").test_client()
    sync(client, {"tenant_id": "tnt_slow", "api_keys": [API_KEY]})
    stripe_stub.respond(
        "GET",
        "/v1/prices",
        200,
        {"object": "list", "data": [{"id": "price_pro_yearly_2025"}], "has_more": False},
        delay=1.5,
    )
    stripe_stub.stall("POST", CHECKOUT_SESSIONS)
    started = time.monotonic()
    response = checkout(client, {"price_id": "pro_yearly", **URLS})
    elapsed = time.monotonic() - started
    assert unavailable(response) == "Stripe did not answer in time. Retry later."
    assert stripe_stub.calls("POST", CHECKOUT_SESSIONS)  # the second call was made
    # 2 s for both calls, plus the SDK's one backoff (0.5 s) and slack; a deadline per
    # call instead would take 1.5 + 2 + 0.5 + 2 s.
    assert elapsed < 3.5, elapsed


def test_portal_ends_within_the_deadline(
    make_app: Callable[..., Flask], stripe_stub: StripeStub
) -> None:
    """A stalled Stripe answers the portal 503 within the deadline, not after 2 x 8 s."""
    client = make_app(STRIPE_DEADLINE_SECONDS="1").test_client()
    sync(client, {"tenant_id": "tnt_slow", "api_keys": [API_KEY], "stripe_customer_id": "cus_S1"})
    stripe_stub.stall("POST", PORTAL_SESSIONS)
    started = time.monotonic()
    assert unavailable(portal(client)) == "Stripe did not answer in time. Retry later."
    assert time.monotonic() - started < 2.5


def test_requests_waiting_on_stripe_are_capped(
    make_app: Callable[..., Flask], stripe_stub: StripeStub
) -> None:
    """Past BILLING_MAX_CONCURRENCY requests in Stripe, the next is a 503 at once."""
    app = make_app(BILLING_MAX_CONCURRENCY="1", STRIPE_DEADLINE_SECONDS="5")
    client = app.test_client()
    sync(client, {"tenant_id": "tnt_cap", "api_keys": [API_KEY]})
    released = stripe_stub.stall("POST", CHECKOUT_SESSIONS)
    first: list[TestResponse] = []
    holder = threading.Thread(
        target=lambda: first.append(
            checkout(app.test_client(), {"price_id": "price_pro_monthly", **URLS})
        )
    )
    holder.start()
    try:
        assert wait_for(lambda: len(stripe_stub.calls("POST", CHECKOUT_SESSIONS)) == 1)
        started = time.monotonic()
        second = checkout(client, {"price_id": "price_pro_monthly", **URLS})
        elapsed = time.monotonic() - started
        assert "Too many billing requests" in unavailable(second)
        assert second.headers["Retry-After"] == "1"
        assert elapsed < 1.0
        assert len(stripe_stub.calls("POST", CHECKOUT_SESSIONS)) == 1
    finally:
        released.set()
        holder.join(10)
    assert first[0].status_code == 200, first[0].json
    # The slot is free again.
    assert checkout(client, {"price_id": "price_pro_monthly", **URLS}).status_code == 200


# --------------------------------------------------------------------------- 12.5 answers


def test_checkout_answer_without_url_is_a_503(
    client: FlaskClient, stripe_stub: StripeStub, tenant: str
) -> None:
    """A 200 without ``url`` is not a session the tenant can open: 503, never url null."""
    stripe_stub.respond("POST", CHECKOUT_SESSIONS, 200, {"id": "cs_test_nourl", "url": None})
    message = unavailable(checkout(client, {"price_id": "price_pro_monthly", **URLS}))
    assert message == "Stripe's answer carries no session URL. Retry later; nothing was opened."


def test_portal_answer_without_url_is_a_503(
    client: FlaskClient, stripe_stub: StripeStub, customer: str
) -> None:
    stripe_stub.respond("POST", PORTAL_SESSIONS, 200, {"id": "bps_nourl"})
    assert "no session URL" in unavailable(portal(client))


def test_stripe_rate_limit_passes_retry_after(
    client: FlaskClient, stripe_stub: StripeStub, tenant: str
) -> None:
    """Stripe's 429 becomes a 503 with Stripe's Retry-After, worded as a rate limit."""
    error = {"error": {"type": "rate_limit_error", "message": "Too many requests"}}
    stripe_stub.respond("POST", CHECKOUT_SESSIONS, 429, error, headers={"Retry-After": "7"})
    response = checkout(client, {"price_id": "price_pro_monthly", **URLS})
    message = unavailable(response)
    assert message == "Stripe is limiting this service's requests. Retry after 7 seconds."
    assert response.headers["Retry-After"] == "7"
    assert response.json is not None
    assert response.json["retry_after"] == 7


def test_stripe_rate_limit_without_retry_after_still_says_when(
    client: FlaskClient, stripe_stub: StripeStub, customer: str
) -> None:
    error = {"error": {"type": "rate_limit_error", "message": "Too many requests"}}
    stripe_stub.respond("POST", PORTAL_SESSIONS, 429, error)
    response = portal(client)
    assert "limiting" in unavailable(response)
    assert response.headers["Retry-After"] == "1"


def _server_error(stub: StripeStub) -> None:
    for _ in range(2):  # the SDK retries a 5xx once
        stub.respond("POST", CHECKOUT_SESSIONS, 500, {"error": {"type": "api_error"}})


def _not_json(stub: StripeStub) -> None:
    stub.respond("POST", CHECKOUT_SESSIONS, 200, b"<html>gateway</html>")


def _stalled(stub: StripeStub) -> None:
    for _ in range(2):
        stub.respond("POST", CHECKOUT_SESSIONS, 200, {"id": "cs_late"}, delay=1.0)


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (_server_error, "Stripe answered with a server error (HTTP 500). Retry later."),
        (_not_json, "Stripe answered with a body that is not JSON. Retry later."),
        (_stalled, "Stripe did not answer in time. Retry later."),
    ],
    ids=["500", "not-json", "timeout"],
)
def test_each_stripe_fault_has_its_own_message(
    app: Flask,
    client: FlaskClient,
    stripe_stub: StripeStub,
    tenant: str,
    fault: Callable[[StripeStub], Any],
    expected: str,
) -> None:
    app.extensions["nat"].stripe.deadline = 0.4
    fault(stripe_stub)
    assert unavailable(checkout(client, {"price_id": "price_pro_monthly", **URLS})) == expected


def test_unreachable_stripe_is_worded_so(make_app: Callable[..., Flask]) -> None:
    client = make_app(STRIPE_API_BASE=f"http://127.0.0.1:{closed_port()}").test_client()
    sync(client, {"tenant_id": "tnt_gone", "api_keys": [API_KEY]})
    response = checkout(client, {"price_id": "price_pro_monthly", **URLS})
    assert unavailable(response) == "Stripe could not be reached. Retry later."
    assert STRIPE_KEY not in response.get_data(as_text=True)


# --------------------------------------------------------------------------- across workers


@pytest.mark.slow
def test_stalled_checkouts_leave_a_worker_for_webhooks(database: Database) -> None:
    """Four checkouts stalled in Stripe on 2 gunicorn workers: a webhook answers at once,
    and the cap (one slot here) is shared by the workers: three are refused at once."""
    with running_stripe_stub() as stub:
        stub.stall("POST", CHECKOUT_SESSIONS)
        env = {
            "DATABASE_URL": database.url,
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "NAT_APP_SYNC_KEY": SYNC_KEY,
            "STRIPE_API_KEY": STRIPE_KEY,
            "STRIPE_API_BASE": stub.base_url,
            "STRIPE_DEADLINE_SECONDS": "3",
            "BILLING_MAX_CONCURRENCY": "1",
        }
        with running_service(env, workers=2) as base_url:
            status, _, _ = http(
                "POST",
                base_url + "/api/v1/tenants/sync",
                body=json.dumps(
                    {"tenants": [{"tenant_id": "tnt_w", "api_keys": [API_KEY]}]}
                ).encode(),
                headers={"X-Sync-Key": SYNC_KEY, "Content-Type": "application/json"},
            )
            assert status == 200
            answers: list[tuple[int, float]] = []

            def open_checkout() -> None:
                started = time.monotonic()
                status, _, _ = http(
                    "POST",
                    base_url + "/api/v1/billing/checkout",
                    body=json.dumps({"price_id": "price_pro_monthly", **URLS}).encode(),
                    headers={"X-API-Key": API_KEY, "Content-Type": "application/json"},
                    timeout=30,
                )
                answers.append((status, time.monotonic() - started))

            threads = [threading.Thread(target=open_checkout) for _ in range(4)]
            for thread in threads:
                thread.start()
            assert wait_for(lambda: len(stub.calls("POST", CHECKOUT_SESSIONS)) >= 1)
            started = time.monotonic()
            status, body = deliver(base_url, webhook_event(), timeout=30)
            waited = time.monotonic() - started
            for thread in threads:
                thread.join(30)
    assert status == 200, body
    assert waited < 1.5, waited
    assert sorted(s for s, _ in answers) == [503, 503, 503, 503]
    # Three refused at once (the cap), one at the deadline (3 s), none near the worker timeout.
    assert sum(1 for _, took in answers if took < 1.0) == 3
    assert max(took for _, took in answers) < 5.0
