"""Stripe event handlers of the quota domain, keyed by Stripe's event type strings.

Above each handler, Stripe's one-line description of the event. Each handler reads the
payload (``quotas/payloads.py``), takes the locks and reads the rows it needs
(``quotas/store.py``, in the lock order described there), asks the decisions
(``quotas/decisions.py``), writes what they return, and records the tenants whose
entitlement moved (``quotas/history.py``). Handlers work in the event's transaction
(``ctx.conn``) and raise :class:`HandlerError` to fail an event so that Stripe's retry
(or ``events reprocess``) runs it again.
"""

from __future__ import annotations

import structlog
from sqlalchemy import Connection

from webhook_service.quotas import decisions, payloads, store
from webhook_service.quotas.history import Entitlements, History
from webhook_service.webhooks.eventlog import customer_deletion_applied
from webhook_service.webhooks.events import StripeEvent
from webhook_service.webhooks.registry import HandlerError, HandlerResult, HandlerScope, Router

log = structlog.get_logger(__name__)
router = Router()


def _history(event: StripeEvent, ctx: HandlerScope) -> History:
    return History("webhook", ctx.now, event_id=event.id, event_type=event.type)


def _customer_deleted(conn: Connection, customer_id: str) -> bool:
    """Was ``customer_id`` deleted? Stripe never reuses ids.

    Stripe cancels a deleted customer's subscriptions in the same moment, so their
    ``customer.subscription.deleted`` (or a slow ``checkout.session.completed``) may
    arrive after ``customer.deleted``; such a late event must not link the dead
    customer to a tenant again. The event log is asked only for what an instance of
    the release before migration 0006 applied (see ``customer_deletion_applied``).
    """
    return store.customer_deleted(conn, customer_id) or customer_deletion_applied(conn, customer_id)


@router.register("checkout.session.completed")
def checkout_session_completed(event: StripeEvent, ctx: HandlerScope) -> HandlerResult:
    """Occurs when a Checkout Session has been successfully completed."""
    link = payloads.read_checkout(event)
    if link == "no_tenant":
        log.warning("checkout_without_tenant", event_id=event.id)
    if not isinstance(link, payloads.CheckoutLink):
        return HandlerResult("processed")
    tenant_id, customer = link.tenant_id, link.customer_id
    # Lock order: the customer, then the tenant rows by id. The insert comes before
    # them, while this transaction holds no tenant row: it can wait for another
    # creation of this tenant, never in a cycle.
    store.lock_customer(ctx.conn, customer)
    created = store.ensure_tenant(ctx.conn, tenant_id, ctx.now)
    if created:
        log.info("tenant_created_from_checkout", tenant_id=tenant_id)
    rows = store.lock_link(ctx.conn, tenant_id, customer)
    ents = Entitlements(ctx.conn, ctx.catalog, ctx.now)
    history = _history(event, ctx)
    for row in rows:
        new = created and row.id == tenant_id
        history.watch(row.id, None if new else ents.of(row.stripe_customer_id))
    move = None
    if _customer_deleted(ctx.conn, customer):
        log.warning("checkout_for_deleted_customer", event_id=event.id, customer_id=customer)
    else:
        owner = next((row.id for row in rows if row.stripe_customer_id == customer), None)
        move = decisions.move_customer(customer, owner, tenant_id)
    if move is not None:
        store.move_customer(ctx.conn, move, ctx.now)
    after = {
        row.id: row.stripe_customer_id
        if move is None
        else move.customer_after(row.id, row.stripe_customer_id)
        for row in rows
    }
    history.record(ctx.conn, {tenant: ents.of(linked) for tenant, linked in after.items()})
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
    state = payloads.read_subscription(event, ctx.catalog.sells)
    customer = state.customer_id
    # Lock order: the customer, its tenant's row, then the subscription's row.
    store.lock_customer(ctx.conn, customer)
    ents = Entitlements(ctx.conn, ctx.catalog, ctx.now)
    history = _history(event, ctx)
    linked = store.tenant_for_customer(ctx.conn, customer, lock=True)
    if linked is not None:
        history.watch(linked, ents.of(customer))
    # The metadata matters only to link a customer no tenant has yet.
    meta_tenant = (
        payloads.tenant_id_field(event, state.metadata_tenant_id, "metadata.tenant_id")
        if linked is None
        else None
    )
    relinked = False
    if meta_tenant is not None and not _customer_deleted(ctx.conn, customer):
        created = store.ensure_tenant(ctx.conn, meta_tenant, ctx.now)
        # No tenant has the customer (its lock is held): only the metadata's row is found.
        tenant = next(
            row for row in store.lock_link(ctx.conn, meta_tenant, customer) if row.id == meta_tenant
        )
        if tenant.stripe_customer_id is None:  # never taken from another customer
            history.watch(meta_tenant, None if created else ents.of(None))
            store.set_customer(ctx.conn, meta_tenant, customer, ctx.now)
            linked = meta_tenant
            relinked = True
    row = store.lock_subscription(ctx.conn, state.id, customer, ctx.now)
    mirrored = decisions.mirror(row, state, event, ctx.now)
    if mirrored is None:
        log.info("stale_event", event_id=event.id, subscription_id=state.id)
    else:
        unknown = decisions.unknown_price(state, ctx.catalog)
        if unknown is not None and linked is not None:
            raise HandlerError(f"UNKNOWN_PRICE {unknown.price}")
        if unknown is not None:
            log.info(
                "unknown_price_of_unowned_customer",
                event_id=event.id,
                subscription_id=state.id,
                customer_id=customer,
                price=unknown.price,
            )
        store.save_subscription(ctx.conn, mirrored)
        ents.written(mirrored)
    if linked is not None and (mirrored is not None or relinked):
        history.record(ctx.conn, {linked: ents.of(customer)})
    # else nothing a quota depends on was written: "after" would equal "before".
    return HandlerResult("stale" if mirrored is None else "processed", linked)


@router.register("invoice.paid")
def invoice_paid(event: StripeEvent, ctx: HandlerScope) -> HandlerResult:
    """Occurs whenever an invoice payment attempt succeeds or an invoice is marked as paid."""
    if payloads.billing_reason(event) not in decisions.PERIOD_BILLING_REASONS:
        customer = payloads.customer_of(event)
        return HandlerResult("processed", store.tenant_for_customer(ctx.conn, customer))
    period = payloads.read_invoice_period(event)
    customer = period.customer_id
    # Lock order: the customer, its tenant's row, then the subscription's row.
    store.lock_customer(ctx.conn, customer)
    tenant_id = store.tenant_for_customer(ctx.conn, customer, lock=True)
    row = store.lock_subscription(ctx.conn, period.subscription_id, customer, ctx.now)
    # A renewal invoice usually follows the subscription event that moved the period.
    advanced = decisions.advance(row, period, ctx.now)
    if advanced is None:
        return HandlerResult("processed", tenant_id)
    ents = Entitlements(ctx.conn, ctx.catalog, ctx.now)
    history = _history(event, ctx)
    if tenant_id is not None:
        history.watch(tenant_id, ents.of(customer))
    store.save_subscription(ctx.conn, advanced)
    ents.written(advanced)
    if tenant_id is not None:
        history.record(ctx.conn, {tenant_id: ents.of(customer)})
    return HandlerResult("processed", tenant_id)


@router.register("invoice.payment_failed")
def invoice_payment_failed(event: StripeEvent, ctx: HandlerScope) -> HandlerResult:
    """Occurs whenever an invoice payment attempt fails."""
    tenant_id = store.tenant_for_customer(ctx.conn, payloads.customer_of(event))
    log.warning(
        "invoice_payment_failed",
        event_id=event.id,
        tenant_id=tenant_id,
        attempt_count=payloads.attempt_count(event),
    )
    return HandlerResult("processed", tenant_id)


@router.register("customer.subscription.trial_will_end")
def trial_will_end(event: StripeEvent, ctx: HandlerScope) -> HandlerResult:
    """Occurs three days before a subscription's trial period is scheduled to end."""
    tenant_id = store.tenant_for_customer(ctx.conn, payloads.customer_of(event))
    log.info("trial_will_end", event_id=event.id, tenant_id=tenant_id)
    return HandlerResult("processed", tenant_id)


@router.register("customer.deleted")
def customer_deleted(event: StripeEvent, ctx: HandlerScope) -> HandlerResult:
    """Occurs whenever a customer is deleted."""
    customer = payloads.read_deleted_customer(event)
    store.lock_customer(ctx.conn, customer)
    tenant_id = store.tenant_for_customer(ctx.conn, customer, lock=True)
    store.record_customer_deleted(ctx.conn, customer, event.id, ctx.now)
    if tenant_id is not None:
        ents = Entitlements(ctx.conn, ctx.catalog, ctx.now)
        history = _history(event, ctx)
        history.watch(tenant_id, ents.of(customer))
        store.set_customer(ctx.conn, tenant_id, None, ctx.now)
        history.record(ctx.conn, {tenant_id: ents.of(None)})
    return HandlerResult("processed", tenant_id)
