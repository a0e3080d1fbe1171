"""Read what the quota domain needs from Stripe event payloads, in both payload shapes.

Pure: an event in, plain values out, no database. A field the handlers need and find
in neither shape fails the event with :class:`HandlerError`, naming the field and the
event's api_version.

Stripe renders an event in the endpoint's API version. Before ``2025-03-31.basil`` the
billing period sits on the subscription (``current_period_*``) and an invoice names its
subscription directly (``invoice.subscription``, ``line.subscription``); from basil on
the period sits on each subscription item and the invoice points through ``parent``
(``invoice.parent.subscription_details.subscription``,
``line.parent.subscription_item_details.subscription``). Both are read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from webhook_service.quotas.tenants import TENANT_ID_RE
from webhook_service.webhooks.events import StripeEvent
from webhook_service.webhooks.registry import HandlerError

# A subscription item's quantity that fits every column (and any real subscription).
MAX_QUANTITY = 1_000_000


def missing(event: StripeEvent, name: str) -> HandlerError:
    return HandlerError(
        f"{event.type}: field {name} is missing in both payload shapes "
        f"(api_version {event.api_version or 'unknown'})"
    )


def object_id(value: Any) -> str | None:
    """An id that Stripe may render as a string or, expanded, as an object."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        return str(value["id"])
    return None


def timestamp(value: Any) -> datetime | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    return None


def tenant_id_field(event: StripeEvent, value: object, field: str) -> str | None:
    """A tenant id the sender put in ``field``: None when absent, an error when malformed."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not TENANT_ID_RE.match(value):
        raise HandlerError(f"{event.type}: {field} is not a valid tenant id")
    return value


def customer_of(event: StripeEvent) -> str | None:
    """The customer the event's object names (``customer``), if any."""
    return object_id(event.object.get("customer"))


@dataclass(frozen=True)
class CheckoutLink:
    """A subscription checkout's tenant and the customer that paid."""

    tenant_id: str
    customer_id: str


def read_checkout(event: StripeEvent) -> CheckoutLink | Literal["not_subscription", "no_tenant"]:
    """The link a completed checkout asks for.

    The tenant is ``client_reference_id``, else ``metadata.tenant_id``; a malformed one
    fails the event. A subscription checkout that names no tenant links nothing, and
    neither does a checkout of another mode.
    """
    session = event.object
    if session.get("mode") != "subscription":
        return "not_subscription"
    metadata = session.get("metadata") if isinstance(session.get("metadata"), dict) else {}
    tenant_id = tenant_id_field(
        event, session.get("client_reference_id"), "client_reference_id"
    ) or tenant_id_field(event, (metadata or {}).get("tenant_id"), "metadata.tenant_id")
    if tenant_id is None:
        return "no_tenant"
    customer = object_id(session.get("customer"))
    if customer is None:
        raise missing(event, "customer")
    return CheckoutLink(tenant_id, customer)


def read_deleted_customer(event: StripeEvent) -> str:
    """The customer a ``customer.deleted`` event deletes."""
    customer = object_id(event.object.get("id"))
    if customer is None:
        raise missing(event, "id")
    return customer


@dataclass(frozen=True)
class SubscriptionState:
    id: str
    customer_id: str
    status: str
    price_id: str | None
    price_lookup_key: str | None
    price_interval: str | None
    price_interval_count: int | None
    quantity: int
    period_start: datetime
    period_end: datetime
    cancel_at_period_end: bool
    metadata_tenant_id: str | None


def _items(sub: dict[str, Any]) -> list[dict[str, Any]]:
    items = sub.get("items")
    data = items.get("data") if isinstance(items, dict) else None
    return [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []


def read_subscription(
    event: StripeEvent, knows_price: Callable[[str | None, str | None], bool]
) -> SubscriptionState:
    """The subscription an event describes, from either payload shape.

    ``knows_price(price_id, lookup_key)`` picks the item whose price the catalog sells;
    without one, the first item is read.
    """
    sub = event.object
    sub_id = object_id(sub.get("id"))
    if sub_id is None:
        raise missing(event, "id")
    customer = object_id(sub.get("customer"))
    if customer is None:
        raise missing(event, "customer")
    status = sub.get("status")
    if not isinstance(status, str) or not status:
        raise missing(event, "status")
    items = _items(sub)
    if not items:
        raise missing(event, "items.data")

    def price_of(item: dict[str, Any]) -> dict[str, Any]:
        price = item.get("price") or item.get("plan")
        return price if isinstance(price, dict) else {}

    # The item whose price the catalog sells; otherwise the first one.
    item = next(
        (
            i
            for i in items
            if knows_price(object_id(price_of(i).get("id")), price_of(i).get("lookup_key"))
        ),
        items[0],
    )
    price = price_of(item)
    recurring = price.get("recurring") if isinstance(price.get("recurring"), dict) else {}
    interval = recurring.get("interval") if recurring else price.get("interval")
    interval_count = recurring.get("interval_count") if recurring else price.get("interval_count")

    # Legacy shape: on the subscription. Basil: on the item.
    start = timestamp(sub.get("current_period_start")) or timestamp(
        item.get("current_period_start")
    )
    if start is None:
        raise missing(event, "current_period_start")
    end = timestamp(sub.get("current_period_end")) or timestamp(item.get("current_period_end"))
    if end is None:
        raise missing(event, "current_period_end")

    quantity = item.get("quantity", sub.get("quantity"))
    if quantity is None:
        quantity = 1  # metered prices carry no quantity
    if (
        not isinstance(quantity, int)
        or isinstance(quantity, bool)
        or not 0 <= quantity <= MAX_QUANTITY
    ):
        # Named by its JSON type, never by its value: the error is logged and stored.
        got = "an integer out of range" if isinstance(quantity, int) else type(quantity).__name__
        raise HandlerError(
            f"{event.type}: quantity is not an integer from 0 to {MAX_QUANTITY} "
            f"(got {got}; api_version {event.api_version or 'unknown'})"
        )
    metadata = sub.get("metadata") if isinstance(sub.get("metadata"), dict) else {}
    tenant_id = metadata.get("tenant_id") if metadata else None
    lookup_key = price.get("lookup_key")
    return SubscriptionState(
        id=sub_id,
        customer_id=customer,
        status=status,
        price_id=object_id(price.get("id")),
        price_lookup_key=lookup_key if isinstance(lookup_key, str) else None,
        price_interval=interval if isinstance(interval, str) else None,
        price_interval_count=interval_count if isinstance(interval_count, int) else None,
        quantity=quantity,
        period_start=start,
        period_end=end,
        cancel_at_period_end=bool(sub.get("cancel_at_period_end", False)),
        metadata_tenant_id=tenant_id if isinstance(tenant_id, str) and tenant_id else None,
    )


@dataclass(frozen=True)
class InvoicePeriod:
    subscription_id: str
    customer_id: str | None
    period_start: datetime
    period_end: datetime


def _line_subscription(line: dict[str, Any]) -> str | None:
    legacy = object_id(line.get("subscription"))
    if legacy:
        return legacy
    parent = line.get("parent")
    if isinstance(parent, dict):
        details = parent.get("subscription_item_details")
        if isinstance(details, dict):
            return object_id(details.get("subscription"))
    return None


def read_invoice_period(event: StripeEvent) -> InvoicePeriod:
    """The subscription an invoice bills and the period of its subscription line."""
    invoice = event.object
    sub_id = object_id(invoice.get("subscription"))
    if sub_id is None:
        parent = invoice.get("parent")
        details = parent.get("subscription_details") if isinstance(parent, dict) else None
        sub_id = object_id(details.get("subscription")) if isinstance(details, dict) else None
    if sub_id is None:
        raise missing(event, "subscription (parent.subscription_details.subscription)")
    lines = invoice.get("lines")
    data = lines.get("data") if isinstance(lines, dict) else None
    candidates = [line for line in data or [] if isinstance(line, dict)]
    line = next((ln for ln in candidates if _line_subscription(ln) == sub_id), None)
    if line is None:
        raise missing(
            event,
            "lines.data[].subscription (lines.data[].parent.subscription_item_details"
            f".subscription) for {sub_id}",
        )
    period = line.get("period") if isinstance(line.get("period"), dict) else {}
    start = timestamp(period.get("start")) if period else None
    end = timestamp(period.get("end")) if period else None
    if start is None or end is None:
        raise missing(event, "lines.data[].period")
    return InvoicePeriod(sub_id, object_id(invoice.get("customer")), start, end)


def billing_reason(event: StripeEvent) -> str | None:
    """An invoice's ``billing_reason``, when it is a string."""
    reason = event.object.get("billing_reason")
    return reason if isinstance(reason, str) else None


def attempt_count(event: StripeEvent) -> int | None:
    """An invoice's ``attempt_count``: a count, or None (the field could hold any text)."""
    attempts = event.object.get("attempt_count")
    return attempts if type(attempts) is int else None
