"""A tenant's quota, computed: which plan its subscriptions grant now, for which window.

Pure: values in, values out. :func:`entitlement` takes the mirrored subscriptions of the
tenant's customer (read by ``quotas/store.py``), the plan catalog and the time;
:class:`Usage` adds the scans spent in the window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from webhook_service.plans import PlanCatalog
from webhook_service.quotas.periods import Window, billing_window, calendar_month

log = structlog.get_logger(__name__)

GRANTING_STATUSES = frozenset({"active", "trialing", "past_due"})
TERMINAL_STATUSES = frozenset({"canceled", "incomplete_expired"})


def rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Subscription:
    """A mirrored Stripe subscription: one row of the ``subscriptions`` table.

    ``status`` is None on a placeholder (only an invoice's period known yet);
    ``(state_created, state_rank)`` order the events that described it.
    """

    id: str
    customer_id: str | None
    metadata_tenant_id: str | None
    status: str | None
    price_id: str | None
    price_lookup_key: str | None
    price_interval: str | None
    price_interval_count: int | None
    quantity: int | None
    cancel_at_period_end: bool
    current_period_start: datetime | None
    current_period_end: datetime | None
    state_created: int | None
    state_rank: int | None
    state_event_id: str | None
    updated_at: datetime


def after_write(
    subs: Sequence[Subscription], customer_id: str, written: Subscription
) -> list[Subscription]:
    """``customer_id``'s subscriptions, read before ``written`` was stored, as they are now.

    The subscriptions an entitlement counts are the customer's rows that have a status
    (what the store reads): ``written`` takes its old row's place among them, joins them
    at the end, or leaves them.
    """
    counted = written.customer_id == customer_id and written.status is not None
    result: list[Subscription] = []
    for sub in subs:
        if sub.id != written.id:
            result.append(sub)
        elif counted:
            result.append(written)
            counted = False
    if counted:
        result.append(written)
    return result


@dataclass(frozen=True)
class UnpricedSubscription:
    id: str
    status: str
    price: str | None


@dataclass(frozen=True)
class Entitlement:
    """What a tenant's subscriptions grant now (no usage)."""

    plan: str
    subscription_status: str | None
    scans_quota: int
    window: Window
    # False while a finished period stays in force, awaiting Stripe's next one.
    window_open: bool = True
    # The granting subscription that decided the quota: quota = plan scans x quantity.
    price_id: str | None = None
    price_lookup_key: str | None = None
    quantity: int | None = None
    # Granting subscriptions that grant nothing: their price is in no plan (an operator
    # must add it to the catalog; until then the default plan stands in for them).
    unpriced: tuple[UnpricedSubscription, ...] = ()

    def spend_time(self, now: datetime) -> datetime:
        """The timestamp a spend accepted at ``now`` against this entitlement is stored with.

        ``now``, or the window's start when the service's clock is behind it (clock skew
        at renewal, Stripe test clocks): a spend counts in the window its quota was
        checked against, whatever the clocks say. While the window is open that time is
        inside it (``now`` < end); once closed, the window stays in force counting all
        since its start. So no accepted spend ever falls outside every window.

        The timestamp is clamped, not the reading: a reading that counted from the
        earlier of the start and ``now`` would move with the clock, and a spend accepted
        before the start would later fall into the previous period, whose quota never
        saw it.
        """
        return max(now, self.window.start)

    def key(self) -> tuple[Any, ...]:
        return (
            self.plan,
            self.subscription_status,
            self.scans_quota,
            self.window.start,
            self.window.end,
        )


@dataclass(frozen=True)
class Usage:
    tenant_id: str
    entitlement: Entitlement
    scans_used: int

    @property
    def scans_remaining(self) -> int:
        return max(0, self.entitlement.scans_quota - self.scans_used)

    def body(self) -> dict[str, Any]:
        ent = self.entitlement
        return {
            "tenant_id": self.tenant_id,
            "plan": ent.plan,
            "subscription_status": ent.subscription_status,
            "scans_quota": ent.scans_quota,
            "scans_used": self.scans_used,
            "scans_remaining": self.scans_remaining,
            "period_start": rfc3339(ent.window.start),
            "quota_reset_date": rfc3339(ent.window.end),
        }


def entitlement(subs: Sequence[Subscription], catalog: PlanCatalog, now: datetime) -> Entitlement:
    """The plan a set of subscriptions grants at ``now`` (largest granting quota wins)."""
    best: tuple[int, datetime, Any, Any] | None = None
    unpriced: list[UnpricedSubscription] = []
    for sub in subs:
        if sub.status not in GRANTING_STATUSES or sub.current_period_start is None:
            continue
        plan = catalog.plan_for_price(sub.price_id, sub.price_lookup_key)
        if plan is None:
            # Mirrored while no tenant owned its customer, or the catalog lost the price
            # since: it grants nothing rather than a quota nobody priced.
            price = sub.price_id or sub.price_lookup_key
            unpriced.append(UnpricedSubscription(sub.id, sub.status, price))
            log.warning(
                "subscription_price_not_in_catalog",
                subscription_id=sub.id,
                customer_id=sub.customer_id,
                price=price,
            )
            continue
        quota = plan.scans_per_month * (1 if sub.quantity is None else sub.quantity)
        candidate = (quota, sub.current_period_start, sub, plan)
        if best is None or candidate[:2] > best[:2]:
            best = candidate
    if best is not None:
        quota, _, sub, plan = best
        window = billing_window(sub.current_period_start, sub.current_period_end, now)
        return Entitlement(
            plan.name,
            sub.status,
            quota,
            window,
            now < window.end,
            price_id=sub.price_id,
            price_lookup_key=sub.price_lookup_key,
            quantity=1 if sub.quantity is None else sub.quantity,
            unpriced=tuple(unpriced),
        )
    latest = max(subs, key=lambda s: (s.state_created or 0, s.updated_at), default=None)
    default = catalog.default_plan
    return Entitlement(
        default.name,
        latest.status if latest is not None else None,
        default.scans_per_month,
        calendar_month(now),
        unpriced=tuple(unpriced),
    )
