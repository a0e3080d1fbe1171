"""Stripe event handlers of the quota domain, keyed by Stripe's event type strings.

Above each handler, Stripe's one-line description of the event. Handlers work in the
event's transaction (``ctx.conn``) and raise :class:`HandlerError` to fail an event so
that Stripe's retry (or ``events reprocess``) runs it again.
"""

from __future__ import annotations

import structlog

from webhook_service.quotas.entitlements import GRANTING_STATUSES
from webhook_service.quotas.subscriptions import (
    SubscriptionState,
    advance_period,
    apply_subscription,
    missing,
    object_id,
    read_invoice_period,
    read_subscription,
)
from webhook_service.quotas.tenants import (
    TENANT_ID_RE,
    History,
    customer_was_deleted,
    ensure_tenant,
    link_customer,
    lock_customer,
    lock_link,
    tenant_for_customer,
    unlink_customer,
)
from webhook_service.webhooks.events import StripeEvent
from webhook_service.webhooks.registry import HandlerError, HandlerResult, HandlerScope, Router

log = structlog.get_logger(__name__)
router = Router()

PERIOD_BILLING_REASONS = frozenset({"subscription_create", "subscription_cycle"})


def _history(event: StripeEvent, ctx: HandlerScope) -> History:
    return History(
        ctx.conn, ctx.catalog, ctx.now, source="webhook", event_id=event.id, event_type=event.type
    )


def _valid_tenant_id(event: StripeEvent, value: object, field: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not TENANT_ID_RE.match(value):
        raise HandlerError(f"{event.type}: {field} is not a valid tenant id")
    return value


@router.register("checkout.session.completed")
def checkout_session_completed(event: StripeEvent, ctx: HandlerScope) -> HandlerResult:
    """Occurs when a Checkout Session has been successfully completed."""
    session = event.object
    if session.get("mode") != "subscription":
        return HandlerResult("processed")
    metadata = session.get("metadata") if isinstance(session.get("metadata"), dict) else {}
    tenant_id = _valid_tenant_id(
        event, session.get("client_reference_id"), "client_reference_id"
    ) or _valid_tenant_id(event, (metadata or {}).get("tenant_id"), "metadata.tenant_id")
    if tenant_id is None:
        log.warning("checkout_without_tenant", event_id=event.id)
        return HandlerResult("processed")
    customer = object_id(session.get("customer"))
    if customer is None:
        raise missing(event, "customer")
    # Lock order (see quotas/tenants.py): the customer, then the tenant rows by id. The
    # insert comes before them, while this transaction holds no tenant row: it can wait
    # for another creation of this tenant, never in a cycle.
    lock_customer(ctx.conn, customer)
    created = ensure_tenant(ctx.conn, tenant_id, ctx.now)
    if created:
        log.info("tenant_created_from_checkout", tenant_id=tenant_id)
    rows = lock_link(ctx.conn, tenant_id, customer)
    history = _history(event, ctx)
    history.watch_rows(rows, created=tenant_id if created else None)
    if customer_was_deleted(ctx.conn, customer):
        log.warning("checkout_for_deleted_customer", event_id=event.id, customer_id=customer)
    else:
        owner = next((row.id for row in rows if row.stripe_customer_id == customer), None)
        link_customer(
            ctx.conn, tenant_id, customer, ctx.now, previous_owner=owner, owner_known=True
        )
    history.record()
    return HandlerResult("processed", tenant_id)


@router.register(
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
)
def subscription_changed(event: StripeEvent, ctx: HandlerScope) -> HandlerResult:
    """Occurs whenever a customer is signed up for a new plan, changes, pauses, resumes or ends.

    (created: "Occurs whenever a customer is signed up for a new plan."; updated:
    "Occurs whenever a subscription changes"; deleted: "Occurs whenever a customer's
    subscription ends."; paused/resumed: "Occurs whenever a customer's subscription is
    paused/no longer paused.")
    """
    state = read_subscription(event, ctx.catalog.sells)
    # Lock order: the customer, its tenant's row, then the subscription's row.
    lock_customer(ctx.conn, state.customer_id)
    history = _history(event, ctx)
    linked = history.watch_customer(state.customer_id, lock=True)
    # The metadata matters only to link a customer no tenant has yet.
    meta_tenant = (
        _valid_tenant_id(event, state.metadata_tenant_id, "metadata.tenant_id")
        if linked is None
        else None
    )
    relinked = False
    if meta_tenant is not None and not customer_was_deleted(ctx.conn, state.customer_id):
        created = ensure_tenant(ctx.conn, meta_tenant, ctx.now)
        # No tenant has the customer (its lock is held): only the metadata's row is found.
        tenant = next(
            row
            for row in lock_link(ctx.conn, meta_tenant, state.customer_id)
            if row.id == meta_tenant
        )
        if tenant.stripe_customer_id is None:
            history.watch_rows([tenant], created=meta_tenant if created else None)
            link_customer(ctx.conn, meta_tenant, state.customer_id, ctx.now, owner_known=True)
            linked = meta_tenant
            relinked = True

    def check_price(applied: SubscriptionState) -> None:
        # An unknown price matters only where it decides a tenant's quota (SPEC §8): a
        # customer no tenant owns is mirrored whatever its price (`stripe trigger` makes
        # throwaway prices). Should a tenant take that customer later, the subscription
        # grants nothing until the catalog sells its price; `tenants show` says so.
        if applied.status not in GRANTING_STATUSES:
            return
        if ctx.catalog.plan_for_price(applied.price_id, applied.price_lookup_key) is not None:
            return
        price = applied.price_id or applied.price_lookup_key
        if linked is not None:
            raise HandlerError(f"UNKNOWN_PRICE {price}")
        log.info(
            "unknown_price_of_unowned_customer",
            event_id=event.id,
            subscription_id=applied.id,
            customer_id=applied.customer_id,
            price=price,
        )

    applied = apply_subscription(ctx.conn, state, event, ctx.now, check_price)
    if applied or relinked:
        history.record(links_unchanged=not relinked)
    # else nothing a quota depends on was written: "after" would equal "before".
    if not applied:
        log.info("stale_event", event_id=event.id, subscription_id=state.id)
    return HandlerResult("processed" if applied else "stale", linked)


@router.register("invoice.paid")
def invoice_paid(event: StripeEvent, ctx: HandlerScope) -> HandlerResult:
    """Occurs whenever an invoice payment attempt succeeds or an invoice is marked as paid."""
    invoice = event.object
    reason = invoice.get("billing_reason")
    if not isinstance(reason, str) or reason not in PERIOD_BILLING_REASONS:
        customer = object_id(invoice.get("customer"))
        return HandlerResult("processed", tenant_for_customer(ctx.conn, customer))
    period = read_invoice_period(event)
    history = _history(event, ctx)
    # Lock order: the customer, its tenant's row, then the subscription's row.
    lock_customer(ctx.conn, period.customer_id)
    tenant_id = tenant_for_customer(ctx.conn, period.customer_id, lock=True)
    # The quota before the change is read only if there is a change (a renewal invoice
    # usually follows the subscription event that moved the period already).
    if advance_period(
        ctx.conn,
        period,
        ctx.now,
        before_change=lambda: history.watch_linked(tenant_id, period.customer_id),
    ):
        history.record(links_unchanged=True)
    return HandlerResult("processed", tenant_id)


@router.register("invoice.payment_failed")
def invoice_payment_failed(event: StripeEvent, ctx: HandlerScope) -> HandlerResult:
    """Occurs whenever an invoice payment attempt fails."""
    tenant_id = tenant_for_customer(ctx.conn, object_id(event.object.get("customer")))
    attempts = event.object.get("attempt_count")
    log.warning(
        "invoice_payment_failed",
        event_id=event.id,
        tenant_id=tenant_id,
        # A count, or nothing: the field is the sender's and could hold any text.
        attempt_count=attempts if type(attempts) is int else None,
    )
    return HandlerResult("processed", tenant_id)


@router.register("customer.subscription.trial_will_end")
def trial_will_end(event: StripeEvent, ctx: HandlerScope) -> HandlerResult:
    """Occurs three days before a subscription's trial period is scheduled to end."""
    tenant_id = tenant_for_customer(ctx.conn, object_id(event.object.get("customer")))
    log.info("trial_will_end", event_id=event.id, tenant_id=tenant_id)
    return HandlerResult("processed", tenant_id)


@router.register("customer.deleted")
def customer_deleted(event: StripeEvent, ctx: HandlerScope) -> HandlerResult:
    """Occurs whenever a customer is deleted."""
    customer = object_id(event.object.get("id"))
    if customer is None:
        raise missing(event, "id")
    lock_customer(ctx.conn, customer)
    history = _history(event, ctx)
    history.watch_customer(customer, lock=True)
    tenant_id = unlink_customer(ctx.conn, customer, ctx.now)
    history.record()
    return HandlerResult("processed", tenant_id)
