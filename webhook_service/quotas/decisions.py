"""What an event changes: the quota domain's decisions, as pure functions.

Values in (a subscription's mirrored row, what a payload says, the catalog, the time),
values out (the row to write, or None when nothing changes). The handlers in
``quotas/event_handlers.py`` read the payload (``quotas/payloads.py``) and the rows
(``quotas/store.py``), ask these functions, then write what they return.

Ordering: per subscription, an event is applied only if its ``(created, rank)`` is not
older than the state's (rank: created < updated/paused/resumed < deleted; equal keys:
the later arrival wins); ``canceled``/``incomplete_expired`` are terminal; periods only
move forward.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from webhook_service.plans import PlanCatalog
from webhook_service.quotas.entitlements import GRANTING_STATUSES, TERMINAL_STATUSES, Subscription
from webhook_service.quotas.payloads import InvoicePeriod, SubscriptionState
from webhook_service.webhooks.events import StripeEvent

# On the same second: created < updated/paused/resumed < deleted.
EVENT_RANK = {
    "customer.subscription.created": 0,
    "customer.subscription.updated": 1,
    "customer.subscription.paused": 1,
    "customer.subscription.resumed": 1,
    "customer.subscription.deleted": 2,
}
# The invoices that start a subscription's period (others move nothing).
PERIOD_BILLING_REASONS = frozenset({"subscription_create", "subscription_cycle"})


def is_stale(row: Subscription, created: int, rank: int) -> bool:
    """Would applying an event of (created, rank) overwrite state from a later event?"""
    if row.status is None:  # nothing but an invoice's period known yet
        return False
    if row.status in TERMINAL_STATUSES:
        return True
    return (created, rank) < (row.state_created or 0, row.state_rank or 0)


def mirror(
    row: Subscription, state: SubscriptionState, event: StripeEvent, now: datetime
) -> Subscription | None:
    """The row a subscription event leaves, or None when the event is stale.

    Everything is the event's, but the period: it only moves forward.
    """
    rank = EVENT_RANK[event.type]
    if is_stale(row, event.created, rank):
        return None
    start: datetime | None = state.period_start
    end: datetime | None = state.period_end
    if row.current_period_start is not None and row.current_period_start > state.period_start:
        start, end = row.current_period_start, row.current_period_end
    return replace(
        row,
        customer_id=state.customer_id,
        metadata_tenant_id=state.metadata_tenant_id,
        status=state.status,
        price_id=state.price_id,
        price_lookup_key=state.price_lookup_key,
        price_interval=state.price_interval,
        price_interval_count=state.price_interval_count,
        quantity=state.quantity,
        cancel_at_period_end=state.cancel_at_period_end,
        current_period_start=start,
        current_period_end=end,
        state_created=event.created,
        state_rank=rank,
        state_event_id=event.id,
        updated_at=now,
    )


def advance(row: Subscription, period: InvoicePeriod, now: datetime) -> Subscription | None:
    """The row an invoice's period leaves, or None when it changes nothing.

    The period moves forward to the invoiced one; an invoice also names the customer of
    a subscription known only from invoices so far.
    """
    changes: dict[str, Any] = {}
    if row.customer_id is None and period.customer_id:
        changes["customer_id"] = period.customer_id
    if row.current_period_start is None or period.period_start > row.current_period_start:
        changes.update(
            current_period_start=period.period_start,
            current_period_end=period.period_end,
            updated_at=now,
        )
    return replace(row, **changes) if changes else None


@dataclass(frozen=True)
class UnknownPrice:
    """A granting subscription on a price no plan sells."""

    price: str | None  # the price id, else its lookup key (None: the payload had neither)


def unknown_price(state: SubscriptionState, catalog: PlanCatalog) -> UnknownPrice | None:
    """Would ``state`` grant on a price the catalog does not sell?

    An unknown price matters only where it decides a tenant's quota: the handler fails
    such an event for a customer a tenant owns, and mirrors it for any other customer
    (``stripe trigger`` makes throwaway prices); it grants nothing until sold.
    """
    if state.status not in GRANTING_STATUSES:
        return None
    if catalog.plan_for_price(state.price_id, state.price_lookup_key) is not None:
        return None
    return UnknownPrice(state.price_id or state.price_lookup_key)


@dataclass(frozen=True)
class CustomerMove:
    """``customer_id`` becomes ``to_tenant``'s, taken from ``from_tenant`` (if any)."""

    customer_id: str
    from_tenant: str | None
    to_tenant: str

    def customer_after(self, tenant_id: str, before: str | None) -> str | None:
        """The customer of ``tenant_id`` once the move is made (``before``: its customer)."""
        if tenant_id == self.to_tenant:
            return self.customer_id
        if tenant_id == self.from_tenant:
            return None
        return before


def move_customer(customer_id: str, owner: str | None, tenant_id: str) -> CustomerMove | None:
    """Give ``customer_id`` (now ``owner``'s, or no tenant's) to ``tenant_id``.

    None when the tenant has it already. A tenant has at most one customer: one it had
    before is replaced.
    """
    if owner == tenant_id:
        return None
    return CustomerMove(customer_id, owner, tenant_id)
