"""Read Stripe subscriptions and invoices in both payload shapes, and mirror them.

Stripe renders an event in the endpoint's API version. Before ``2025-03-31.basil`` the
billing period sits on the subscription (``current_period_*``) and an invoice names its
subscription directly (``invoice.subscription``, ``line.subscription``); from basil on
the period sits on each subscription item and the invoice points through ``parent``
(``invoice.parent.subscription_details.subscription``,
``line.parent.subscription_item_details.subscription``). Both are read; a field found
in neither fails the event, naming the field and the api_version.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from webhook_service.models import subscriptions
from webhook_service.quotas.entitlements import TERMINAL_STATUSES
from webhook_service.sql import Prepared, run
from webhook_service.webhooks.events import StripeEvent
from webhook_service.webhooks.registry import HandlerError

# A subscription item's quantity that fits every column (and any real subscription).
MAX_QUANTITY = 1_000_000

# On the same second: created < updated/paused/resumed < deleted.
EVENT_RANK = {
    "customer.subscription.created": 0,
    "customer.subscription.updated": 1,
    "customer.subscription.paused": 1,
    "customer.subscription.resumed": 1,
    "customer.subscription.deleted": 2,
}


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
    """The subscription an event describes, from either payload shape."""
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


# Built once: the hot path runs them with parameters only.
_PLACEHOLDER_COLUMNS = ("id", "customer_id", "cancel_at_period_end", "updated_at")
_PLACEHOLDER = {
    "sqlite": Prepared(
        sqlite_insert(subscriptions).on_conflict_do_nothing(index_elements=["id"]),
        column_keys=_PLACEHOLDER_COLUMNS,
    ),
    "postgresql": Prepared(
        pg_insert(subscriptions).on_conflict_do_nothing(index_elements=["id"]),
        column_keys=_PLACEHOLDER_COLUMNS,
    ),
}
_ROW_QUERY = select(subscriptions).where(subscriptions.c.id == bindparam("b_id"))
_ROW = Prepared(_ROW_QUERY)
_ROW_FOR_UPDATE = Prepared(_ROW_QUERY.with_for_update())
# Every mirrored column is a parameter named after the column.
_MIRROR_COLUMNS = (
    "customer_id",
    "metadata_tenant_id",
    "status",
    "price_id",
    "price_lookup_key",
    "price_interval",
    "price_interval_count",
    "quantity",
    "cancel_at_period_end",
    "current_period_start",
    "current_period_end",
    "state_created",
    "state_rank",
    "state_event_id",
    "updated_at",
)
_UPDATE = update(subscriptions).where(subscriptions.c.id == bindparam("b_id"))
_MIRROR = Prepared(_UPDATE, column_keys=_MIRROR_COLUMNS)
# advance_period: the customer (when only an invoice named it), the period, or both.
_ADVANCE = {
    (True, False): Prepared(_UPDATE, column_keys=("customer_id",)),
    (False, True): Prepared(
        _UPDATE, column_keys=("current_period_start", "current_period_end", "updated_at")
    ),
    (True, True): Prepared(
        _UPDATE,
        column_keys=("customer_id", "current_period_start", "current_period_end", "updated_at"),
    ),
}


def _lock_row(conn: Connection, sub_id: str, customer_id: str | None, now: datetime) -> Any:
    """Create the subscription's row if needed and lock it for this transaction.

    Read (and on PostgreSQL lock) first: the row usually exists, and one round trip
    does. Absent, a placeholder is inserted (a concurrent insert of the same id waits
    on the primary key, then does nothing) and the row read and locked again.
    """
    dialect = conn.dialect.name
    query = _ROW if dialect == "sqlite" else _ROW_FOR_UPDATE
    row = run(conn, query, {"b_id": sub_id}).one_or_none()
    if row is not None:
        return row
    run(
        conn,
        _PLACEHOLDER[dialect],
        {
            "id": sub_id,
            "customer_id": customer_id,
            "cancel_at_period_end": False,
            "updated_at": now,
        },
    )
    return run(conn, query, {"b_id": sub_id}).one()


def is_stale(row: Any, created: int, rank: int) -> bool:
    """Would applying an event of (created, rank) overwrite state from a later event?"""
    if row.status is None:  # nothing but an invoice's period known yet
        return False
    if row.status in TERMINAL_STATUSES:
        return True
    return (created, rank) < (row.state_created or 0, row.state_rank or 0)


def apply_subscription(
    conn: Connection,
    state: SubscriptionState,
    event: StripeEvent,
    now: datetime,
    check: Callable[[SubscriptionState], None],
) -> bool:
    """Mirror ``state`` unless a later event already did; False when the event is stale.

    ``check`` runs only for an event that will be applied (a stale one's price does
    not matter) and may raise to fail it.
    """
    row = _lock_row(conn, state.id, state.customer_id, now)
    rank = EVENT_RANK[event.type]
    if is_stale(row, event.created, rank):
        return False
    check(state)
    start, end = state.period_start, state.period_end
    if row.current_period_start is not None and row.current_period_start > start:
        start, end = row.current_period_start, row.current_period_end  # periods only move on
    run(
        conn,
        _MIRROR,
        {
            "b_id": state.id,
            "customer_id": state.customer_id,
            "metadata_tenant_id": state.metadata_tenant_id,
            "status": state.status,
            "price_id": state.price_id,
            "price_lookup_key": state.price_lookup_key,
            "price_interval": state.price_interval,
            "price_interval_count": state.price_interval_count,
            "quantity": state.quantity,
            "cancel_at_period_end": state.cancel_at_period_end,
            "current_period_start": start,
            "current_period_end": end,
            "state_created": event.created,
            "state_rank": rank,
            "state_event_id": event.id,
            "updated_at": now,
        },
    )
    return True


def advance_period(
    conn: Connection,
    period: InvoicePeriod,
    now: datetime,
    before_change: Callable[[], None] | None = None,
) -> bool:
    """Move the subscription's period forward to the invoiced one; False if nothing changed.

    (An invoice may also name the customer of a subscription known only from invoices.)
    ``before_change`` runs first when something is about to change.
    """
    row = _lock_row(conn, period.subscription_id, period.customer_id, now)
    values: dict[str, Any] = {"b_id": period.subscription_id}
    set_customer = row.customer_id is None and bool(period.customer_id)
    if set_customer:
        values["customer_id"] = period.customer_id
    newer = row.current_period_start is None or period.period_start > row.current_period_start
    if newer:
        values.update(
            current_period_start=period.period_start,
            current_period_end=period.period_end,
            updated_at=now,
        )
    if set_customer or newer:
        if before_change is not None:
            before_change()
        run(conn, _ADVANCE[set_customer, newer], values)
        return True
    return False
