"""Tenant sync: apply a validated request in set-based statements, all or nothing.

What a sync does, entry by entry, is in :meth:`QuotaService.sync`'s docstring. Here it
is done for the whole request at once (10,000 tenants in a few statements each),
inside the caller's transaction:

1. read what is there (``quotas/store.py``): the entries' tenants, the tenants that
   have the entries' customers, the keys of the tenants whose key set is replaced and
   the present owners of every key given;
2. work out the final customer of every tenant touched, and the keys to delete and to
   insert (:func:`plan_sync`, pure);
3. write: unlink the customers that move (so no two rows ever hold one customer), upsert
   every entry, delete and insert the keys that change, and write the history rows.

History: a sync changes no subscription, and a tenant's entitlement depends only on the
subscriptions of the customer it is linked to (not on ``active``). So only a tenant that
is created, or whose customer link changes, can have a changed entitlement; those, and
only those, are compared (before and after from one read of the customers' subscriptions).

The HTTP request is validated next to its view (``web/sync_request.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlalchemy import Connection

from webhook_service.plans import PlanCatalog
from webhook_service.quotas import store
from webhook_service.quotas.entitlements import Entitlement, entitlement
from webhook_service.quotas.store import TenantChange

log = structlog.get_logger(__name__)

# The most tenants one sync request applies (one transaction); a larger set is paged.
MAX_SYNC_TENANTS = 10_000


@dataclass(frozen=True)
class SyncEntry:
    """One validated entry of a sync request.

    ``key_hashes``: the tenant's whole key set (None: keep the keys it has);
    ``customer_id``: the customer it gets (None: keep its link).
    """

    tenant_id: str
    key_hashes: frozenset[str] | None
    customer_id: str | None
    active: bool


@dataclass(frozen=True)
class SyncPlan:
    """What a sync writes, worked out from one read of the present state."""

    created: list[str]
    # tenant -> its customer before the sync (tenants of the entries and owners of their customers)
    before: dict[str, str | None]
    # tenant -> its customer after the sync (the same tenants)
    after: dict[str, str | None]
    unlink: list[str]
    relinked: list[tuple[str, str, str]]  # (customer, from tenant, to tenant)
    delete_keys: list[str]
    insert_keys: list[tuple[str, str]]  # (hash, tenant)


def keys_given(entries: Sequence[SyncEntry]) -> tuple[list[str], dict[str, str]]:
    """The tenants whose key set is replaced (keys given, or inactive: none), and the
    key hashes given, each with the tenant it goes to."""
    wanted: dict[str, str] = {}
    replaced: list[str] = []
    for entry in entries:
        if not entry.active:
            replaced.append(entry.tenant_id)
        elif entry.key_hashes is not None:
            replaced.append(entry.tenant_id)
            wanted.update(dict.fromkeys(entry.key_hashes, entry.tenant_id))
    return replaced, wanted


def plan_sync(
    entries: Sequence[SyncEntry],
    existing: Mapping[str, str | None],
    owners: Mapping[str, str],
    wanted: Mapping[str, str],
    present: Mapping[str, str],
) -> SyncPlan:
    """Work out the writes of a sync.

    ``existing``: each entry's tenant that exists, with its customer; ``owners``: each
    entry's customer that a tenant has, with that tenant; ``wanted``: the key hashes
    given (:func:`keys_given`); ``present``: the tenant of every key of a tenant whose
    key set is replaced, and of every key given.
    """
    ids = [entry.tenant_id for entry in entries]
    customers = [entry.customer_id for entry in entries if entry.customer_id]
    before: dict[str, str | None] = dict(existing)
    for owned, holder in owners.items():
        before[holder] = owned
    after = dict(before)
    relinked = []
    for entry in entries:
        after.setdefault(entry.tenant_id, None)
        customer = entry.customer_id
        if not customer:
            continue
        owner = owners.get(customer)
        if owner is not None and owner != entry.tenant_id:
            relinked.append((customer, owner, entry.tenant_id))
            if after[owner] == customer:  # unless its own entry gave it another one
                after[owner] = None
        after[entry.tenant_id] = customer
    created = [tenant_id for tenant_id in ids if tenant_id not in existing]
    # The order the entries name them in: the entries' tenants, then the other owners.
    order = dict.fromkeys(ids)
    order.update(dict.fromkeys(owners[c] for c in customers if c in owners))
    after = {t: after[t] for t in order}
    unlink = sorted(t for t, c in before.items() if c is not None and after.get(t) != c)
    delete_keys = sorted(h for h, owner in present.items() if wanted.get(h) != owner)
    insert_keys = sorted((h, t) for h, t in wanted.items() if present.get(h) != t)
    return SyncPlan(created, before, after, unlink, relinked, delete_keys, insert_keys)


def sync_changes(
    plan: SyncPlan, entitlements: Mapping[str | None, Entitlement], now: datetime
) -> list[TenantChange]:
    """A history row for each tenant created, or whose entitlement moved with its link.

    ``entitlements``: what each customer before or after grants (None: no customer).
    """
    created = set(plan.created)
    rows = []
    for tenant_id, customer in plan.after.items():
        new = tenant_id in created
        previous = plan.before.get(tenant_id)
        if not new and customer == previous:
            continue  # the same link: the same entitlement
        after = entitlements[customer]
        if not new and entitlements[previous].key() == after.key():
            continue
        rows.append(
            TenantChange(
                tenant_id=tenant_id,
                source="sync",
                event_id=None,
                changed_at=now,
                plan=after.plan,
                subscription_status=after.subscription_status,
                scans_quota=after.scans_quota,
                period_start=after.window.start,
                quota_reset_date=after.window.end,
                # A sync's rows name no event, price or quantity.
                event_type=None,
                price_id=None,
                price_lookup_key=None,
                quantity=None,
            )
        )
    return rows


def apply_sync(
    conn: Connection, entries: Sequence[SyncEntry], catalog: PlanCatalog, now: datetime
) -> int:
    """Apply validated entries in the caller's transaction; return how many were created."""
    existing = store.tenant_links(conn, (entry.tenant_id for entry in entries))
    owners = store.customer_owners(conn, (e.customer_id for e in entries if e.customer_id))
    replaced, wanted = keys_given(entries)
    present = store.key_owners(conn, replaced, wanted)
    plan = plan_sync(entries, existing, owners, wanted, present)
    for customer, from_tenant, to_tenant in plan.relinked:
        log.warning(
            "customer_relinked", customer_id=customer, from_tenant=from_tenant, to_tenant=to_tenant
        )
    store.unlink_tenants(conn, plan.unlink, now)
    store.upsert_tenants(
        conn, [(entry.tenant_id, entry.customer_id, entry.active) for entry in entries], now
    )
    store.delete_keys(conn, plan.delete_keys)
    store.insert_keys(conn, plan.insert_keys, now)

    # A sync moves no subscription: the entitlements before and after come from one read.
    created = set(plan.created)
    moved = [t for t in plan.after if t in created or plan.after[t] != plan.before.get(t)]
    customers = [plan.after[t] for t in moved] + [plan.before.get(t) for t in moved]
    none = entitlement([], catalog, now)  # most customers of a sync have no subscription
    entitlements: dict[str | None, Entitlement] = {
        c: entitlement(subs, catalog, now) if subs else none
        for c, subs in store.subscriptions_of(conn, customers).items()
    }
    entitlements[None] = none
    store.record_changes_in_bulk(conn, sync_changes(plan, entitlements, now))
    return len(plan.created)
