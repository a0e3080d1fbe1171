"""POST /api/v1/billing/checkout and /api/v1/billing/portal (X-API-Key)."""

from __future__ import annotations

import hashlib
import time
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint

from webhook_service.billing.stripe_api import StripeGateway
from webhook_service.errors import InvalidRequest, NoBillingAccount, UnknownPrice
from webhook_service.web.current import services
from webhook_service.web.tenant_api import current_tenant, idempotency_key, json_body

bp = Blueprint("billing", __name__)

# Identical checkout requests within this many seconds open one session, not two.
CHECKOUT_DEDUP_WINDOW_S = 600
MAX_URL_LENGTH = 2048


def _url(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    problem = None
    if not isinstance(value, str) or not value:
        problem = "required"
    elif len(value) > MAX_URL_LENGTH:
        problem = f"at most {MAX_URL_LENGTH} characters"
    else:
        try:
            parts = urlsplit(value)
        except ValueError:  # e.g. "http://[::1": an unclosed IPv6 host
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            problem = "must be an absolute http:// or https:// URL"
    if problem:
        raise InvalidRequest(f"{name} {problem}.", details=[{"field": name, "message": problem}])
    assert isinstance(value, str)
    return value


@bp.post("/api/v1/billing/checkout")
def create_checkout() -> dict[str, Any]:
    """Open a Stripe Checkout Session (subscription mode) for the tenant."""
    tenant = current_tenant()
    svc = services()
    given_key = idempotency_key()  # a malformed key is refused before any call to Stripe
    body = json_body()
    price = body.get("price_id")
    if not isinstance(price, str) or not price or len(price) > 255:
        raise InvalidRequest(
            "price_id is required.", details=[{"field": "price_id", "message": "required"}]
        )
    success_url = _url(body, "success_url")
    cancel_url = _url(body, "cancel_url")
    if not svc.settings.catalog.sells(price):
        raise UnknownPrice(f"Price {price} is not in the plan catalog.")
    gateway = svc.stripe
    # 503 BILLING_NOT_CONFIGURED without STRIPE_API_KEY; one deadline for both calls.
    with gateway.session():
        return _open_checkout(
            gateway, tenant.id, tenant.customer_id, price, success_url, cancel_url, given_key
        )


def _open_checkout(
    gateway: StripeGateway,
    tenant_id: str,
    customer_id: str | None,
    price: str,
    success_url: str,
    cancel_url: str,
    given_key: str | None,
) -> dict[str, Any]:
    price_id = price
    if not price.startswith("price_"):
        resolved = gateway.price_for_lookup_key(price)
        if resolved is None:
            raise UnknownPrice(f"No active Stripe price has the lookup key {price}.")
        price_id = resolved
    params: dict[str, Any] = {
        "mode": "subscription",
        "line_items": [{"price": price_id, "quantity": 1}],
        "success_url": success_url,
        "cancel_url": cancel_url,
        "client_reference_id": tenant_id,
        "metadata": {"tenant_id": tenant_id},
        "subscription_data": {"metadata": {"tenant_id": tenant_id}},
    }
    if customer_id:
        params["customer"] = customer_id
    return gateway.create_checkout_session(params, _idempotency_key(tenant_id, params, given_key))


def _idempotency_key(tenant_id: str, params: dict[str, Any], given: str | None) -> str:
    """The client's Idempotency-Key (scoped to the tenant), or one derived from the request."""
    if given is not None:
        # Stripe compares the parameters a key is reused with, and refuses other ones
        # with an idempotency_error, answered 422 IDEMPOTENCY_KEY_REUSED.
        basis = f"{tenant_id}\n{given}"
    else:
        window = int(time.time()) // CHECKOUT_DEDUP_WINDOW_S
        basis = f"{tenant_id}\n{sorted(params.items())!r}\n{window}"
    return "nat-checkout-" + hashlib.sha256(basis.encode("utf-8")).hexdigest()[:48]


@bp.post("/api/v1/billing/portal")
def create_portal() -> dict[str, Any]:
    """Open a Stripe billing portal session for the tenant's customer."""
    tenant = current_tenant()
    svc = services()
    return_url = _url(json_body(), "return_url")
    gateway = svc.stripe
    gateway.client  # noqa: B018 - raises BillingNotConfigured before any work
    if not tenant.customer_id:
        raise NoBillingAccount()
    with gateway.session():
        return gateway.create_portal_session(tenant.customer_id, return_url)
