"""Stripe v1 webhook events for tests, rendered the way Stripe renders them.

Pure Python, no I/O. Every builder takes keyword arguments, every id can be overridden,
and ids that are not given are either random (``new_id``: event ids) or derived
deterministically from the ids they belong to (``stable_id``: a subscription's item id,
an invoice's line id, a price's product, ...), so the same subscription keeps the same
item id across events, as it does at Stripe.

Two payload shapes, chosen by ``api_version`` (Stripe renders each event in the API
version of the endpoint it is sent to):

* **legacy** (anything before ``2025-03-31.basil``, e.g. ``2024-06-20``): the subscription
  carries ``current_period_start``/``current_period_end``; the invoice carries
  ``subscription`` and ``subscription_details``; an invoice line carries ``subscription``,
  ``subscription_item``, ``proration``, ``type: "subscription"``, ``price`` and ``plan``.
* **basil** (``2025-03-31.basil`` and later): the periods live only on
  ``subscription.items.data[]``; the invoice names its subscription in
  ``parent.subscription_details.subscription``; a line names it in
  ``parent.subscription_item_details.subscription`` and its price in
  ``pricing.price_details.price``. The fields basil removed are absent, not null.

Objects follow the API reference example objects and webhook payloads captured from
Stripe test mode for those versions (see ``fixtures/README.md``). Keys come out the way
Stripe orders them: ``id``, ``object``, then alphabetical.

``render`` produces Stripe's exact bytes: 2-space pretty JSON, UTF-8 (no ``\\u`` escapes),
empty arrays as ``[`` + blank line + ``]`` and empty objects as ``{`` + newline + ``}``,
no trailing newline. This was checked by re-rendering a captured, signed Stripe payload
and getting the same bytes (and the same ``v1`` signature) back; ``json.dumps(indent=2)``
differs from it.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import json
import re
import secrets
import string
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import stripe

JSONDict = dict[str, Any]

LEGACY_API_VERSION: Final = "2024-06-20"
BASIL_API_VERSION: Final = "2025-03-31.basil"
API_VERSIONS: Final = (LEGACY_API_VERSION, BASIL_API_VERSION)

SUBSCRIPTION_EVENT_TYPES: Final = (
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
    "customer.subscription.trial_will_end",
)
INVOICE_EVENT_TYPES: Final = (
    "invoice.created",
    "invoice.finalized",
    "invoice.paid",
    "invoice.payment_succeeded",
    "invoice.payment_failed",
)

DEFAULT_PRICE_ID: Final = "price_pro_monthly"
DEFAULT_UNIT_AMOUNT: Final = 4900
DEFAULT_CURRENCY: Final = "usd"
DEFAULT_PRODUCT_NAME: Final = "NAT Pro"
DEFAULT_CUSTOMER_EMAIL: Final = "billing@example.com"
DEFAULT_CUSTOMER_NAME: Final = "Example Customer"
#: When the synthetic prices and products were "created" (2024-12-01T00:00:00Z).
CATALOG_CREATED: Final = 1733011200
#: Synthetic platform account the hosted invoice URLs point at.
ACCOUNT_ID: Final = "acct_1NatDemoAccount0"
ACCOUNT_COUNTRY: Final = "US"
ACCOUNT_NAME: Final = "NAT Demo"

#: Headers Stripe sends with every webhook delivery, besides ``Stripe-Signature``.
DELIVERY_HEADERS: Final[Mapping[str, str]] = {
    "Content-Type": "application/json; charset=utf-8",
    "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
    "Cache-Control": "no-cache",
    "Accept": "*/*; q=0.5, application/xml",
}

_ALPHANUM: Final = string.digits + string.ascii_uppercase + string.ascii_lowercase
_ID_LENGTHS: Final[Mapping[str, int]] = {
    "acct": 16,
    "cus": 14,
    "si": 14,
    "prod": 14,
    "req": 14,
    "cs_test": 58,
    "cs_live": 58,
}
_API_VERSION_RE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}(\.[a-z]+)?$")
_MULTIPLY: Final = "\u00d7"  # MULTIPLICATION SIGN, as in "1 \u00d7 NAT Pro (at $49.00 / month)"


# --------------------------------------------------------------------------- versions


def is_basil(api_version: str) -> bool:
    """True when ``api_version`` renders the basil shape (2025-03-31.basil or later)."""
    if not _API_VERSION_RE.match(api_version):
        raise ValueError(f"not a Stripe API version: {api_version!r}")
    return api_version[:10] >= BASIL_API_VERSION[:10]


# --------------------------------------------------------------------------- ids


def id_length(prefix: str) -> int:
    """How many characters follow the prefix in a real id (`cus_` 14, `evt_` 24, ...)."""
    return _ID_LENGTHS.get(prefix, 24)


def new_id(prefix: str, length: int | None = None) -> str:
    """A random Stripe-like id: ``evt_`` + 24 alphanumerics, ``cus_`` + 14, and so on."""
    n = length if length is not None else id_length(prefix)
    body = "".join(secrets.choice(_ALPHANUM) for _ in range(n))
    if prefix.startswith("cs_"):
        body = "a1" + body[2:]
    return f"{prefix}_{body}"


def _stream(seed: str) -> Iterator[str]:
    counter = 0
    while True:
        digest = hashlib.sha256(f"{seed}\x1f{counter}".encode()).digest()
        for byte in digest:
            yield _ALPHANUM[byte % len(_ALPHANUM)]
        counter += 1


def stable_id(prefix: str, *parts: object, length: int | None = None) -> str:
    """A Stripe-like id derived from ``parts``: the same parts give the same id."""
    n = length if length is not None else id_length(prefix)
    chars = _stream("\x1e".join([prefix, *(str(p) for p in parts)]))
    body = "".join(next(chars) for _ in range(n))
    if prefix.startswith("cs_"):
        body = "a1" + body[2:]
    return f"{prefix}_{body}"


def stable_uuid(*parts: object) -> str:
    """A version-4-shaped UUID derived from ``parts`` (Stripe idempotency keys look so)."""
    digest = hashlib.sha256("\x1e".join(str(p) for p in parts).encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def _invoice_prefix(customer: str) -> str:
    return stable_id("x", "invoice_prefix", customer, length=8)[2:].upper()


# --------------------------------------------------------------------------- time


def add_months(timestamp: int, months: int) -> int:
    """``timestamp`` moved by whole calendar months, day clamped to the month's length."""
    dt = datetime.fromtimestamp(timestamp, tz=UTC)
    index = dt.month - 1 + months
    year, month = dt.year + index // 12, index % 12 + 1
    day = min(dt.day, calendar.monthrange(year, month)[1])
    return int(dt.replace(year=year, month=month, day=day).timestamp())


def add_interval(timestamp: int, interval: str, count: int = 1) -> int:
    """``timestamp`` moved by ``count`` recurring intervals (day, week, month, year)."""
    if interval == "month":
        return add_months(timestamp, count)
    if interval == "year":
        return add_months(timestamp, 12 * count)
    if interval == "week":
        return timestamp + int(timedelta(weeks=count).total_seconds())
    if interval == "day":
        return timestamp + int(timedelta(days=count).total_seconds())
    raise ValueError(f"unknown recurring interval {interval!r}")


# --------------------------------------------------------------------------- ordering


def _ordered(value: Mapping[str, Any]) -> JSONDict:
    """Stripe's key order: ``id``, ``object``, then the other keys alphabetically."""
    head = [k for k in ("id", "object") if k in value]
    rest = sorted(k for k in value if k not in ("id", "object"))
    return {k: _canonical(value[k]) for k in (*head, *rest)}


def _canonical(value: Any) -> Any:
    if isinstance(value, Mapping):
        return _ordered(value)
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def previous_attributes_between(before: Mapping[str, Any], after: Mapping[str, Any]) -> JSONDict:
    """Stripe's ``previous_attributes`` for a change from ``before`` to ``after``.

    The old value of every attribute that changed; nested objects recurse (so a changed
    item gives ``{"items": {"data": [...old items...]}}``), lists are taken whole.
    """
    changed: JSONDict = {}
    for key, old in before.items():
        new = after.get(key)
        if old == new:
            continue
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            changed[key] = previous_attributes_between(old, new)
        else:
            changed[key] = old
    return _ordered(changed)


# --------------------------------------------------------------------------- rendering


def _render(value: Any, level: int) -> str:
    pad, inner = "  " * level, "  " * (level + 1)
    if isinstance(value, Mapping):
        if not value:
            return "{\n" + pad + "}"
        members = (
            inner + json.dumps(str(k), ensure_ascii=False) + ": " + _render(v, level + 1)
            for k, v in value.items()
        )
        return "{\n" + ",\n".join(members) + "\n" + pad + "}"
    if isinstance(value, list | tuple):
        if not value:
            return "[\n\n" + pad + "]"
        items = (inner + _render(v, level + 1) for v in value)
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def render(event: Mapping[str, Any]) -> bytes:
    """The body exactly as Stripe sends it (see the module docstring).

    Keys are written in the order they have in ``event``; the builders here already put
    them in Stripe's order.
    """
    return _render(event, 0).encode("utf-8")


# --------------------------------------------------------------------------- signing


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header value for ``payload``, made by the stripe SDK.

    ``timestamp`` defaults to now. Real test-mode deliveries also carry a ``v0=`` entry
    made with a legacy secret; receivers must ignore it, so it is left out.
    """
    return str(
        stripe.WebhookSignature.generate_signature_header(
            payload.decode("utf-8"), secret, timestamp
        )
    )


def sign_rolled(payload: bytes, secrets_: Sequence[str], timestamp: int | None = None) -> str:
    """A header with one ``v1`` per secret, as Stripe sends while a secret is rolled."""
    if not secrets_:
        raise ValueError("at least one secret is needed")
    headers = [sign(payload, s, timestamp) for s in secrets_]
    t = headers[0].split(",", 1)[0]
    return ",".join([t, *(h.split(",", 1)[1] for h in headers)])


def sign_bytes(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """Like ``sign`` but over raw bytes, for bodies that are not UTF-8 (the SDK decodes)."""
    t = timestamp if timestamp is not None else int(datetime.now(tz=UTC).timestamp())
    digest = hmac.new(secret.encode("utf-8"), f"{t}.".encode() + payload, hashlib.sha256)
    return f"t={t},v1={digest.hexdigest()}"


def delivery_headers(payload: bytes, secret: str, timestamp: int | None = None) -> dict[str, str]:
    """All headers of a Stripe delivery of ``payload``, signature included."""
    return {**DELIVERY_HEADERS, "Stripe-Signature": sign(payload, secret, timestamp)}


# --------------------------------------------------------------------------- envelope


def event(
    event_type: str,
    obj: Mapping[str, Any],
    *,
    created: int,
    api_version: str,
    event_id: str | None = None,
    previous_attributes: Mapping[str, Any] | None = None,
    request_id: str | None = None,
    idempotency_key: str | None = None,
    livemode: bool = False,
    pending_webhooks: int = 1,
) -> JSONDict:
    """A v1 event around ``obj`` (a snapshot event, as webhook endpoints receive).

    ``request_id``/``idempotency_key`` default to null, which is what Stripe sends for
    events it raised itself (renewals, retries); events caused by an API call carry
    ``req_...`` and the call's idempotency key. ``previous_attributes`` is only rendered
    for ``*.updated`` events, the only ones that have it.
    """
    is_basil(api_version)  # validates
    if previous_attributes is not None and not event_type.endswith(".updated"):
        raise ValueError(f"{event_type} events have no previous_attributes")
    data: JSONDict = {"object": dict(obj)}
    if previous_attributes is not None:
        data["previous_attributes"] = dict(previous_attributes)
    return _ordered(
        {
            "id": event_id or new_id("evt"),
            "object": "event",
            "api_version": api_version,
            "created": created,
            "data": data,
            "livemode": livemode,
            "pending_webhooks": pending_webhooks,
            "request": {"id": request_id, "idempotency_key": idempotency_key},
            "type": event_type,
        }
    )


# --------------------------------------------------------------------------- prices


def price_object(
    *,
    api_version: str,
    price_id: str = DEFAULT_PRICE_ID,
    lookup_key: str | None = None,
    interval: str = "month",
    interval_count: int = 1,
    unit_amount: int = DEFAULT_UNIT_AMOUNT,
    currency: str = DEFAULT_CURRENCY,
    product: str | None = None,
) -> JSONDict:
    """A recurring per-unit price (``recurring.aggregate_usage`` exists before basil)."""
    recurring: JSONDict = {
        "interval": interval,
        "interval_count": interval_count,
        "meter": None,
        "trial_period_days": None,
        "usage_type": "licensed",
    }
    if not is_basil(api_version):
        recurring["aggregate_usage"] = None
    return _ordered(
        {
            "id": price_id,
            "object": "price",
            "active": True,
            "billing_scheme": "per_unit",
            "created": CATALOG_CREATED,
            "currency": currency,
            "custom_unit_amount": None,
            "livemode": False,
            "lookup_key": lookup_key,
            "metadata": {},
            "nickname": None,
            "product": product or stable_id("prod", price_id),
            "recurring": recurring,
            "tax_behavior": "unspecified",
            "tiers_mode": None,
            "transform_quantity": None,
            "type": "recurring",
            "unit_amount": unit_amount,
            "unit_amount_decimal": str(unit_amount),
        }
    )


def plan_object(
    *,
    api_version: str,
    price_id: str = DEFAULT_PRICE_ID,
    interval: str = "month",
    interval_count: int = 1,
    unit_amount: int = DEFAULT_UNIT_AMOUNT,
    currency: str = DEFAULT_CURRENCY,
    product: str | None = None,
) -> JSONDict:
    """The ``plan`` view of a recurring price, still rendered on subscriptions."""
    plan: JSONDict = {
        "id": price_id,
        "object": "plan",
        "active": True,
        "amount": unit_amount,
        "amount_decimal": str(unit_amount),
        "billing_scheme": "per_unit",
        "created": CATALOG_CREATED,
        "currency": currency,
        "interval": interval,
        "interval_count": interval_count,
        "livemode": False,
        "metadata": {},
        "meter": None,
        "nickname": None,
        "product": product or stable_id("prod", price_id),
        "tiers_mode": None,
        "transform_usage": None,
        "trial_period_days": None,
        "usage_type": "licensed",
    }
    if not is_basil(api_version):
        plan["aggregate_usage"] = None
    return _ordered(plan)


# --------------------------------------------------------------------------- subscriptions


def subscription_object(
    *,
    api_version: str,
    sub_id: str,
    customer: str,
    status: str,
    period_start: int,
    period_end: int,
    price_id: str = DEFAULT_PRICE_ID,
    lookup_key: str | None = None,
    interval: str = "month",
    interval_count: int = 1,
    quantity: int = 1,
    unit_amount: int = DEFAULT_UNIT_AMOUNT,
    currency: str = DEFAULT_CURRENCY,
    product: str | None = None,
    start_date: int | None = None,
    metadata: Mapping[str, str] | None = None,
    cancel_at_period_end: bool = False,
    cancel_at: int | None = None,
    canceled_at: int | None = None,
    ended_at: int | None = None,
    cancellation_reason: str | None = None,
    trial_start: int | None = None,
    trial_end: int | None = None,
    latest_invoice: str | None = None,
    item_id: str | None = None,
    default_payment_method: str | None = None,
) -> JSONDict:
    """A subscription with one item, in the shape of ``api_version``.

    ``start_date`` (default ``period_start``) is also the subscription's ``created`` and
    ``billing_cycle_anchor``. Nothing here is inferred from ``status``: the event builder
    fills ``canceled_at`` and friends.
    """
    basil = is_basil(api_version)
    start = start_date if start_date is not None else period_start
    product_id = product or stable_id("prod", price_id)
    price_kw: JSONDict = {
        "api_version": api_version,
        "price_id": price_id,
        "interval": interval,
        "interval_count": interval_count,
        "unit_amount": unit_amount,
        "currency": currency,
        "product": product_id,
    }
    plan = plan_object(**price_kw)
    item: JSONDict = {
        "id": item_id or stable_id("si", sub_id),
        "object": "subscription_item",
        "billing_thresholds": None,
        "created": start,
        "discounts": [],
        "metadata": {},
        "plan": plan,
        "price": price_object(lookup_key=lookup_key, **price_kw),
        "quantity": quantity,
        "subscription": sub_id,
        "tax_rates": [],
    }
    automatic_tax: JSONDict = {"enabled": False, "liability": None}
    sub: JSONDict = {
        "id": sub_id,
        "object": "subscription",
        "application": None,
        "application_fee_percent": None,
        "automatic_tax": automatic_tax,
        "billing_cycle_anchor": start,
        "billing_cycle_anchor_config": None,
        "billing_thresholds": None,
        "cancel_at": cancel_at,
        "cancel_at_period_end": cancel_at_period_end,
        "canceled_at": canceled_at,
        "cancellation_details": {
            "comment": None,
            "feedback": None,
            "reason": cancellation_reason,
        },
        "collection_method": "charge_automatically",
        "created": start,
        "currency": currency,
        "customer": customer,
        "days_until_due": None,
        "default_payment_method": default_payment_method or stable_id("pm", customer),
        "default_source": None,
        "default_tax_rates": [],
        "description": None,
        "discounts": [],
        "ended_at": ended_at,
        "invoice_settings": {"account_tax_ids": None, "issuer": {"type": "self"}},
        "items": {
            "object": "list",
            "data": [item],
            "has_more": False,
            "total_count": 1,
            "url": f"/v1/subscription_items?subscription={sub_id}",
        },
        "latest_invoice": latest_invoice,
        "livemode": False,
        "metadata": dict(metadata or {}),
        "next_pending_invoice_item_invoice": None,
        "on_behalf_of": None,
        "pause_collection": None,
        "payment_settings": {
            "payment_method_options": {
                "acss_debit": None,
                "bancontact": None,
                "card": {"network": None, "request_three_d_secure": "automatic"},
                "customer_balance": None,
                "konbini": None,
                "sepa_debit": None,
                "us_bank_account": None,
            },
            "payment_method_types": ["card"],
            "save_default_payment_method": "off",
        },
        "pending_invoice_item_interval": None,
        "pending_setup_intent": None,
        "pending_update": None,
        "plan": plan,
        "quantity": quantity,
        "schedule": None,
        "start_date": start,
        "status": status,
        "test_clock": None,
        "transfer_data": None,
        "trial_end": trial_end,
        "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
        "trial_start": trial_start,
    }
    if basil:
        # 2025-03-31.basil: periods per item, the subscription-level ones are gone;
        # the deprecated single ``discount`` is gone too.
        item["current_period_start"] = period_start
        item["current_period_end"] = period_end
        automatic_tax["disabled_reason"] = None
    else:
        sub["current_period_start"] = period_start
        sub["current_period_end"] = period_end
        sub["discount"] = None
    return _ordered(sub)


def subscription_event(
    event_type: str,
    *,
    sub_id: str,
    customer: str,
    status: str,
    period_start: int,
    period_end: int,
    created: int,
    api_version: str,
    price_id: str = DEFAULT_PRICE_ID,
    lookup_key: str | None = None,
    interval: str = "month",
    interval_count: int = 1,
    quantity: int = 1,
    unit_amount: int = DEFAULT_UNIT_AMOUNT,
    currency: str = DEFAULT_CURRENCY,
    product: str | None = None,
    start_date: int | None = None,
    metadata: Mapping[str, str] | None = None,
    cancel_at_period_end: bool = False,
    cancel_at: int | None = None,
    canceled_at: int | None = None,
    ended_at: int | None = None,
    cancellation_reason: str | None = None,
    trial_start: int | None = None,
    trial_end: int | None = None,
    latest_invoice: str | None = None,
    item_id: str | None = None,
    default_payment_method: str | None = None,
    previous: Mapping[str, Any] | None = None,
    previous_attributes: Mapping[str, Any] | None = None,
    event_id: str | None = None,
    request_id: str | None = None,
    idempotency_key: str | None = None,
) -> JSONDict:
    """A ``customer.subscription.*`` event.

    Status-dependent fields are filled as Stripe fills them unless given: a ``canceled``
    or ``incomplete_expired`` subscription has ``ended_at`` (and ``canceled_at``) at
    ``created``; ``cancel_at_period_end=True`` sets ``cancel_at`` to the period end and
    ``canceled_at`` to ``created``; ``trialing`` takes the period as its trial.

    For ``*.updated``, ``previous`` names the arguments that were different before, with
    their old values (``{"status": "incomplete"}``, ``{"quantity": 1}``,
    ``{"period_start": ..., "period_end": ..., "latest_invoice": ...}``), and the
    ``previous_attributes`` are rendered from it in the event's shape (basil reports a
    period change under ``items.data``). ``previous_attributes`` passes them verbatim.
    """
    if event_type not in SUBSCRIPTION_EVENT_TYPES:
        raise ValueError(f"not a subscription event type: {event_type!r}")
    if status in ("canceled", "incomplete_expired"):
        ended_at = created if ended_at is None else ended_at
        canceled_at = ended_at if canceled_at is None else canceled_at
        if status == "canceled" and cancellation_reason is None:
            cancellation_reason = "cancellation_requested"
    if cancel_at_period_end:
        cancel_at = period_end if cancel_at is None else cancel_at
        canceled_at = created if canceled_at is None else canceled_at
        cancellation_reason = cancellation_reason or "cancellation_requested"
    if status == "trialing":
        trial_start = period_start if trial_start is None else trial_start
        trial_end = period_end if trial_end is None else trial_end
    spec: JSONDict = {
        "api_version": api_version,
        "sub_id": sub_id,
        "customer": customer,
        "status": status,
        "period_start": period_start,
        "period_end": period_end,
        "price_id": price_id,
        "lookup_key": lookup_key,
        "interval": interval,
        "interval_count": interval_count,
        "quantity": quantity,
        "unit_amount": unit_amount,
        "currency": currency,
        "product": product,
        "start_date": start_date if start_date is not None else period_start,
        "metadata": metadata,
        "cancel_at_period_end": cancel_at_period_end,
        "cancel_at": cancel_at,
        "canceled_at": canceled_at,
        "ended_at": ended_at,
        "cancellation_reason": cancellation_reason,
        "trial_start": trial_start,
        "trial_end": trial_end,
        "latest_invoice": latest_invoice,
        "item_id": item_id,
        "default_payment_method": default_payment_method,
    }
    obj = subscription_object(**spec)
    prev: Mapping[str, Any] | None = previous_attributes
    if prev is None and previous is not None:
        unknown = set(previous) - (set(spec) - {"api_version", "sub_id", "customer"})
        if unknown:
            raise TypeError(f"previous: unknown or fixed arguments {sorted(unknown)}")
        prev = previous_attributes_between(subscription_object(**{**spec, **previous}), obj)
    if prev is None and event_type.endswith(".updated"):
        prev = {}
    return event(
        event_type,
        obj,
        created=created,
        api_version=api_version,
        event_id=event_id,
        previous_attributes=prev,
        request_id=request_id,
        idempotency_key=idempotency_key,
    )


# --------------------------------------------------------------------------- invoices


def _money(amount: int, currency: str) -> str:
    if currency == "usd":
        return f"${amount / 100:.2f}"
    return f"{amount / 100:.2f} {currency.upper()}"


def invoice_line_object(
    *,
    api_version: str,
    invoice_id: str,
    sub_id: str,
    period_start: int,
    period_end: int,
    price_id: str = DEFAULT_PRICE_ID,
    lookup_key: str | None = None,
    interval: str = "month",
    interval_count: int = 1,
    quantity: int = 1,
    unit_amount: int = DEFAULT_UNIT_AMOUNT,
    currency: str = DEFAULT_CURRENCY,
    product: str | None = None,
    product_name: str = DEFAULT_PRODUCT_NAME,
    subscription_item: str | None = None,
    line_id: str | None = None,
    proration: bool = False,
) -> JSONDict:
    """The subscription line of an invoice; ``period`` is the subscription period billed."""
    product_id = product or stable_id("prod", price_id)
    item_id = subscription_item or stable_id("si", sub_id)
    amount = unit_amount * quantity
    every = interval if interval_count == 1 else f"{interval_count} {interval}s"
    line: JSONDict = {
        "id": line_id or stable_id("il", invoice_id),
        "object": "line_item",
        "amount": amount,
        "currency": currency,
        "description": (
            f"{quantity} {_MULTIPLY} {product_name} (at {_money(unit_amount, currency)} / {every})"
        ),
        "discount_amounts": [],
        "discountable": True,
        "discounts": [],
        "invoice": invoice_id,
        "livemode": False,
        "metadata": {},
        "period": {"end": period_end, "start": period_start},
        "quantity": quantity,
    }
    if is_basil(api_version):
        line["parent"] = {
            "invoice_item_details": None,
            "subscription_item_details": {
                "invoice_item": None,
                "proration": proration,
                "proration_details": {"credited_items": None},
                "subscription": sub_id,
                "subscription_item": item_id,
            },
            "type": "subscription_item_details",
        }
        line["pretax_credit_amounts"] = []
        line["pricing"] = {
            "price_details": {"price": price_id, "product": product_id},
            "type": "price_details",
            "unit_amount_decimal": str(unit_amount),
        }
        line["taxes"] = []
    else:
        price_kw: JSONDict = {
            "api_version": api_version,
            "price_id": price_id,
            "interval": interval,
            "interval_count": interval_count,
            "unit_amount": unit_amount,
            "currency": currency,
            "product": product_id,
        }
        line["amount_excluding_tax"] = amount
        line["plan"] = plan_object(**price_kw)
        line["price"] = price_object(lookup_key=lookup_key, **price_kw)
        line["proration"] = proration
        line["proration_details"] = {"credited_items": None}
        line["subscription"] = sub_id
        line["subscription_item"] = item_id
        line["tax_amounts"] = []
        line["tax_rates"] = []
        line["type"] = "subscription"
        line["unit_amount_excluding_tax"] = str(unit_amount)
    return _ordered(line)


def invoice_object(
    *,
    api_version: str,
    invoice_id: str,
    sub_id: str,
    customer: str,
    status: str,
    period_start: int,
    period_end: int,
    created: int,
    billing_reason: str = "subscription_cycle",
    finalized_at: int | None = None,
    paid_at: int | None = None,
    attempt_count: int = 1,
    next_payment_attempt: int | None = None,
    webhooks_delivered_at: int | None = None,
    price_id: str = DEFAULT_PRICE_ID,
    lookup_key: str | None = None,
    interval: str = "month",
    interval_count: int = 1,
    quantity: int = 1,
    unit_amount: int = DEFAULT_UNIT_AMOUNT,
    currency: str = DEFAULT_CURRENCY,
    product: str | None = None,
    product_name: str = DEFAULT_PRODUCT_NAME,
    subscription_item: str | None = None,
    line_id: str | None = None,
    subscription_metadata: Mapping[str, str] | None = None,
    number: str | None = None,
    customer_email: str = DEFAULT_CUSTOMER_EMAIL,
    customer_name: str = DEFAULT_CUSTOMER_NAME,
    charge: str | None = None,
    payment_intent: str | None = None,
) -> JSONDict:
    """An invoice with one subscription line, in the shape of ``api_version``.

    ``status`` is ``draft``, ``open`` or ``paid``. ``period_start``/``period_end`` are the
    subscription period the line bills. The invoice's own ``period_start``/``period_end``
    are rendered as Stripe does: for ``subscription_cycle`` the *previous* period (the one
    that just ended), otherwise both equal ``created``.
    """
    if status not in ("draft", "open", "paid"):
        raise ValueError(f"unsupported invoice status {status!r}")
    basil = is_basil(api_version)
    line = invoice_line_object(
        api_version=api_version,
        invoice_id=invoice_id,
        sub_id=sub_id,
        period_start=period_start,
        period_end=period_end,
        price_id=price_id,
        lookup_key=lookup_key,
        interval=interval,
        interval_count=interval_count,
        quantity=quantity,
        unit_amount=unit_amount,
        currency=currency,
        product=product,
        product_name=product_name,
        subscription_item=subscription_item,
        line_id=line_id,
    )
    if billing_reason == "subscription_cycle":
        own_start, own_end = add_interval(period_start, interval, -interval_count), period_start
    else:
        own_start = own_end = created
    total = unit_amount * quantity
    draft, paid = status == "draft", status == "paid"
    finalized = None if draft else (finalized_at if finalized_at is not None else created)
    token = stable_id("x", "hosted", invoice_id, length=64)[2:]
    invoice: JSONDict = {
        "id": invoice_id,
        "object": "invoice",
        "account_country": ACCOUNT_COUNTRY,
        "account_name": ACCOUNT_NAME,
        "account_tax_ids": None,
        "amount_due": total,
        "amount_paid": total if paid else 0,
        "amount_remaining": 0 if paid else total,
        "amount_shipping": 0,
        "application": None,
        "attempt_count": 0 if draft else attempt_count,
        "attempted": not draft and (paid or attempt_count > 0),
        "auto_advance": not paid,
        "automatic_tax": {"enabled": False, "liability": None, "status": None},
        "billing_reason": billing_reason,
        "collection_method": "charge_automatically",
        "created": created,
        "currency": currency,
        "custom_fields": None,
        "customer": customer,
        "customer_address": None,
        "customer_email": customer_email,
        "customer_name": customer_name,
        "customer_phone": None,
        "customer_shipping": None,
        "customer_tax_exempt": "none",
        "customer_tax_ids": [],
        "default_payment_method": None,
        "default_source": None,
        "default_tax_rates": [],
        "description": None,
        "discounts": [],
        "due_date": None,
        "effective_at": finalized,
        "ending_balance": None if draft else 0,
        "footer": None,
        "from_invoice": None,
        "hosted_invoice_url": (
            None if draft else f"https://invoice.stripe.com/i/{ACCOUNT_ID}/test_{token}?s=ap"
        ),
        "invoice_pdf": (
            None if draft else f"https://pay.stripe.com/invoice/{ACCOUNT_ID}/test_{token}/pdf?s=ap"
        ),
        "issuer": {"type": "self"},
        "last_finalization_error": None,
        "latest_revision": None,
        "lines": {
            "object": "list",
            "data": [line],
            "has_more": False,
            "total_count": 1,
            "url": f"/v1/invoices/{invoice_id}/lines",
        },
        "livemode": False,
        "metadata": {},
        "next_payment_attempt": None if paid else next_payment_attempt,
        "number": None if draft else (number or f"{_invoice_prefix(customer)}-0001"),
        "on_behalf_of": None,
        "payment_settings": {
            "default_mandate": None,
            "payment_method_options": {
                "acss_debit": None,
                "bancontact": None,
                "card": {"request_three_d_secure": "automatic"},
                "customer_balance": None,
                "konbini": None,
                "sepa_debit": None,
                "us_bank_account": None,
            },
            "payment_method_types": None,
        },
        "period_end": own_end,
        "period_start": own_start,
        "post_payment_credit_notes_amount": 0,
        "pre_payment_credit_notes_amount": 0,
        "receipt_number": None,
        "rendering": None,
        "shipping_cost": None,
        "shipping_details": None,
        "starting_balance": 0,
        "statement_descriptor": None,
        "status": status,
        "status_transitions": {
            "finalized_at": finalized,
            "marked_uncollectible_at": None,
            "paid_at": (paid_at if paid_at is not None else finalized) if paid else None,
            "voided_at": None,
        },
        "subtotal": total,
        "subtotal_excluding_tax": total,
        "test_clock": None,
        "total": total,
        "total_discount_amounts": [],
        "total_excluding_tax": total,
        "webhooks_delivered_at": webhooks_delivered_at,
    }
    sub_metadata = dict(subscription_metadata or {})
    if basil:
        # 2025-03-31.basil: ``parent`` replaces subscription/subscription_details/quote;
        # payment_intent/charge/paid/paid_out_of_band moved to invoice payments;
        # total_tax_amounts became total_taxes; the single ``discount`` is gone.
        invoice["amount_overpaid"] = 0
        invoice["automatic_tax"].update({"disabled_reason": None, "provider": None})
        invoice["automatically_finalizes_at"] = None
        invoice["parent"] = {
            "quote_details": None,
            "subscription_details": {"metadata": sub_metadata, "subscription": sub_id},
            "type": "subscription_details",
        }
        invoice["total_pretax_credit_amounts"] = []
        invoice["total_taxes"] = []
    else:
        attempted = bool(invoice["attempted"])
        invoice["application_fee_amount"] = None
        invoice["charge"] = (charge or stable_id("ch", invoice_id)) if attempted else None
        invoice["discount"] = None
        invoice["paid"] = paid
        invoice["paid_out_of_band"] = False
        invoice["payment_intent"] = (
            (payment_intent or stable_id("pi", invoice_id)) if not draft else None
        )
        invoice["quote"] = None
        invoice["subscription"] = sub_id
        invoice["subscription_details"] = {"metadata": sub_metadata}
        invoice["tax"] = None
        invoice["total_tax_amounts"] = []
        invoice["transfer_data"] = None
    return _ordered(invoice)


_INVOICE_STATUS: Final[Mapping[str, str]] = {
    "invoice.created": "draft",
    "invoice.finalized": "open",
    "invoice.paid": "paid",
    "invoice.payment_succeeded": "paid",
    "invoice.payment_failed": "open",
}


def invoice_event(
    event_type: str,
    *,
    invoice_id: str,
    sub_id: str,
    customer: str,
    period_start: int,
    period_end: int,
    created: int,
    api_version: str,
    billing_reason: str = "subscription_cycle",
    price_id: str = DEFAULT_PRICE_ID,
    lookup_key: str | None = None,
    interval: str = "month",
    interval_count: int = 1,
    quantity: int = 1,
    unit_amount: int = DEFAULT_UNIT_AMOUNT,
    currency: str = DEFAULT_CURRENCY,
    product: str | None = None,
    product_name: str = DEFAULT_PRODUCT_NAME,
    subscription_item: str | None = None,
    line_id: str | None = None,
    subscription_metadata: Mapping[str, str] | None = None,
    number: str | None = None,
    invoice_created: int | None = None,
    customer_email: str = DEFAULT_CUSTOMER_EMAIL,
    customer_name: str = DEFAULT_CUSTOMER_NAME,
    event_id: str | None = None,
    request_id: str | None = None,
    idempotency_key: str | None = None,
) -> JSONDict:
    """``invoice.paid``, ``invoice.payment_failed`` (and created/finalized/succeeded).

    ``period_start``/``period_end`` are the subscription period on the subscription line.
    A cycle invoice is created as a draft at ``period_start`` (Stripe finalizes and
    charges it about an hour later, at the event); other invoices are created just before
    the event. A failed payment leaves the invoice ``open`` with a retry scheduled in
    three days.
    """
    status = _INVOICE_STATUS.get(event_type)
    if status is None:
        raise ValueError(f"not an invoice event type this factory renders: {event_type!r}")
    cycle = billing_reason == "subscription_cycle"
    inv_created = invoice_created
    if inv_created is None:
        inv_created = period_start if cycle else created - 4
    failed = event_type == "invoice.payment_failed"
    obj = invoice_object(
        api_version=api_version,
        invoice_id=invoice_id,
        sub_id=sub_id,
        customer=customer,
        status=status,
        period_start=period_start,
        period_end=period_end,
        created=inv_created,
        billing_reason=billing_reason,
        finalized_at=(created - 2) if cycle else inv_created,
        paid_at=created - 1,
        attempt_count=0 if event_type in ("invoice.created", "invoice.finalized") else 1,
        next_payment_attempt=created + 3 * 86400 if failed else None,
        webhooks_delivered_at=inv_created if cycle else None,
        price_id=price_id,
        lookup_key=lookup_key,
        interval=interval,
        interval_count=interval_count,
        quantity=quantity,
        unit_amount=unit_amount,
        currency=currency,
        product=product,
        product_name=product_name,
        subscription_item=subscription_item,
        line_id=line_id,
        subscription_metadata=subscription_metadata,
        number=number,
        customer_email=customer_email,
        customer_name=customer_name,
    )
    return event(
        event_type,
        obj,
        created=created,
        api_version=api_version,
        event_id=event_id,
        request_id=request_id,
        idempotency_key=idempotency_key,
    )


# --------------------------------------------------------------------------- checkout


def checkout_session_object(
    *,
    api_version: str,
    session_id: str,
    customer: str | None,
    subscription: str | None,
    created: int,
    client_reference_id: str | None = None,
    metadata: Mapping[str, str] | None = None,
    mode: str = "subscription",
    amount_total: int = DEFAULT_UNIT_AMOUNT,
    currency: str = DEFAULT_CURRENCY,
    invoice: str | None = None,
    payment_intent: str | None = None,
    customer_email: str = DEFAULT_CUSTOMER_EMAIL,
    customer_name: str = DEFAULT_CUSTOMER_NAME,
    success_url: str = "https://app.example.com/billing/success",
    cancel_url: str = "https://app.example.com/billing/cancel",
) -> JSONDict:
    """A completed Checkout Session (``shipping_details`` moved in basil)."""
    if mode not in ("payment", "setup", "subscription"):
        raise ValueError(f"unknown checkout mode {mode!r}")
    session: JSONDict = {
        "id": session_id,
        "object": "checkout.session",
        "after_expiration": None,
        "allow_promotion_codes": None,
        "amount_subtotal": 0 if mode == "setup" else amount_total,
        "amount_total": 0 if mode == "setup" else amount_total,
        "automatic_tax": {"enabled": False, "liability": None, "status": None},
        "billing_address_collection": None,
        "cancel_url": cancel_url,
        "client_reference_id": client_reference_id,
        "client_secret": None,
        "consent": None,
        "consent_collection": None,
        "created": created,
        "currency": currency,
        "currency_conversion": None,
        "custom_fields": [],
        "custom_text": {
            "after_submit": None,
            "shipping_address": None,
            "submit": None,
            "terms_of_service_acceptance": None,
        },
        "customer": customer,
        "customer_creation": "always" if mode == "payment" else None,
        "customer_details": {
            "address": {
                "city": None,
                "country": "US",
                "line1": None,
                "line2": None,
                "postal_code": "94107",
                "state": None,
            },
            "email": customer_email,
            "name": customer_name,
            "phone": None,
            "tax_exempt": "none",
            "tax_ids": [],
        },
        "customer_email": None,
        "expires_at": created + 86400,
        "invoice": invoice,
        "invoice_creation": None,
        "livemode": False,
        "locale": None,
        "metadata": dict(metadata or {}),
        "mode": mode,
        "payment_intent": (
            (payment_intent or stable_id("pi", session_id)) if mode == "payment" else None
        ),
        "payment_link": None,
        "payment_method_collection": "always",
        "payment_method_configuration_details": None,
        "payment_method_options": {"card": {"request_three_d_secure": "automatic"}},
        "payment_method_types": ["card"],
        "payment_status": "no_payment_required" if mode == "setup" else "paid",
        "phone_number_collection": {"enabled": False},
        "recovered_from": None,
        "saved_payment_method_options": {
            "allow_redisplay_filters": ["always"],
            "payment_method_remove": None,
            "payment_method_save": None,
        },
        "setup_intent": stable_id("seti", session_id) if mode == "setup" else None,
        "shipping_address_collection": None,
        "shipping_cost": None,
        "shipping_options": [],
        "status": "complete",
        "submit_type": None,
        "subscription": subscription,
        "success_url": success_url,
        "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        "ui_mode": "hosted",
        "url": None,
    }
    if is_basil(api_version):
        session["adaptive_pricing"] = {"enabled": False}
        session["automatic_tax"]["provider"] = None
        session["collected_information"] = {"shipping_details": None}
        session["discounts"] = []
        session["origin_context"] = None
        session["permissions"] = None
    else:
        session["shipping_details"] = None
    return _ordered(session)


def checkout_completed_event(
    *,
    session_id: str,
    customer: str | None,
    subscription: str | None,
    created: int,
    api_version: str,
    client_reference_id: str | None = None,
    metadata: Mapping[str, str] | None = None,
    mode: str = "subscription",
    amount_total: int = DEFAULT_UNIT_AMOUNT,
    currency: str = DEFAULT_CURRENCY,
    invoice: str | None = None,
    session_created: int | None = None,
    customer_email: str = DEFAULT_CUSTOMER_EMAIL,
    customer_name: str = DEFAULT_CUSTOMER_NAME,
    event_id: str | None = None,
    request_id: str | None = None,
    idempotency_key: str | None = None,
) -> JSONDict:
    """``checkout.session.completed``; the session was opened ``session_created``
    (default: five minutes before the event)."""
    obj = checkout_session_object(
        api_version=api_version,
        session_id=session_id,
        customer=customer,
        subscription=subscription,
        created=session_created if session_created is not None else created - 300,
        client_reference_id=client_reference_id,
        metadata=metadata,
        mode=mode,
        amount_total=amount_total,
        currency=currency,
        invoice=invoice,
        customer_email=customer_email,
        customer_name=customer_name,
    )
    return event(
        "checkout.session.completed",
        obj,
        created=created,
        api_version=api_version,
        event_id=event_id,
        request_id=request_id,
        idempotency_key=idempotency_key,
    )


# --------------------------------------------------------------------------- customers


def customer_object(
    *,
    api_version: str,
    customer: str,
    created: int,
    email: str = DEFAULT_CUSTOMER_EMAIL,
    name: str = DEFAULT_CUSTOMER_NAME,
    metadata: Mapping[str, str] | None = None,
    next_invoice_sequence: int = 1,
) -> JSONDict:
    """A customer (basil dropped the deprecated single ``discount``)."""
    obj: JSONDict = {
        "id": customer,
        "object": "customer",
        "address": None,
        "balance": 0,
        "created": created,
        "currency": DEFAULT_CURRENCY,
        "default_source": None,
        "delinquent": False,
        "description": None,
        "email": email,
        "invoice_prefix": _invoice_prefix(customer),
        "invoice_settings": {
            "custom_fields": None,
            "default_payment_method": None,
            "footer": None,
            "rendering_options": None,
        },
        "livemode": False,
        "metadata": dict(metadata or {}),
        "name": name,
        "next_invoice_sequence": next_invoice_sequence,
        "phone": None,
        "preferred_locales": [],
        "shipping": None,
        "tax_exempt": "none",
        "test_clock": None,
    }
    if not is_basil(api_version):
        obj["discount"] = None
    return _ordered(obj)


def customer_deleted_event(
    *,
    customer: str,
    created: int,
    api_version: str,
    customer_created: int | None = None,
    email: str = DEFAULT_CUSTOMER_EMAIL,
    name: str = DEFAULT_CUSTOMER_NAME,
    metadata: Mapping[str, str] | None = None,
    next_invoice_sequence: int = 1,
    event_id: str | None = None,
    request_id: str | None = None,
    idempotency_key: str | None = None,
) -> JSONDict:
    """``customer.deleted``: the event carries the full customer as it was, not a stub."""
    obj = customer_object(
        api_version=api_version,
        customer=customer,
        created=customer_created if customer_created is not None else created - 86400,
        email=email,
        name=name,
        metadata=metadata,
        next_invoice_sequence=next_invoice_sequence,
    )
    return event(
        "customer.deleted",
        obj,
        created=created,
        api_version=api_version,
        event_id=event_id,
        request_id=request_id,
        idempotency_key=idempotency_key,
    )


# --------------------------------------------------------------------------- payments


def payment_intent_object(
    *,
    api_version: str,
    payment_intent_id: str,
    customer: str | None,
    amount: int,
    created: int,
    currency: str = DEFAULT_CURRENCY,
    description: str | None = None,
    metadata: Mapping[str, str] | None = None,
    payment_method: str | None = None,
) -> JSONDict:
    """A succeeded card PaymentIntent (basil removed ``invoice`` from it)."""
    obj: JSONDict = {
        "id": payment_intent_id,
        "object": "payment_intent",
        "amount": amount,
        "amount_capturable": 0,
        "amount_details": {"tip": {}},
        "amount_received": amount,
        "application": None,
        "application_fee_amount": None,
        "automatic_payment_methods": {"allow_redirects": "always", "enabled": True},
        "canceled_at": None,
        "cancellation_reason": None,
        "capture_method": "automatic_async",
        "client_secret": f"{payment_intent_id}_secret_{stable_id('x', payment_intent_id)[2:]}",
        "confirmation_method": "automatic",
        "created": created,
        "currency": currency,
        "customer": customer,
        "description": description,
        "last_payment_error": None,
        "latest_charge": stable_id("ch", payment_intent_id),
        "livemode": False,
        "metadata": dict(metadata or {}),
        "next_action": None,
        "on_behalf_of": None,
        "payment_method": payment_method or stable_id("pm", customer or payment_intent_id),
        "payment_method_configuration_details": None,
        "payment_method_options": {
            "card": {
                "installments": None,
                "mandate_options": None,
                "network": None,
                "request_three_d_secure": "automatic",
            }
        },
        "payment_method_types": ["card"],
        "processing": None,
        "receipt_email": None,
        "review": None,
        "setup_future_usage": None,
        "shipping": None,
        "source": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": "succeeded",
        "transfer_data": None,
        "transfer_group": None,
    }
    if not is_basil(api_version):
        obj["invoice"] = None
    return _ordered(obj)


def payment_intent_succeeded_event(
    *,
    customer: str | None,
    amount: int,
    created: int,
    api_version: str,
    payment_intent_id: str | None = None,
    currency: str = DEFAULT_CURRENCY,
    description: str | None = None,
    metadata: Mapping[str, str] | None = None,
    event_id: str | None = None,
    request_id: str | None = None,
    idempotency_key: str | None = None,
) -> JSONDict:
    """``payment_intent.succeeded`` for a one-off card payment (a type the service ignores)."""
    obj = payment_intent_object(
        api_version=api_version,
        payment_intent_id=payment_intent_id or new_id("pi"),
        customer=customer,
        amount=amount,
        created=created - 3,
        currency=currency,
        description=description,
        metadata=metadata,
    )
    return event(
        "payment_intent.succeeded",
        obj,
        created=created,
        api_version=api_version,
        event_id=event_id,
        request_id=request_id,
        idempotency_key=idempotency_key,
    )
