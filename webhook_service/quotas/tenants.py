"""Tenants, their API keys (SHA-256 only) and their link to a Stripe customer.

Every function works inside the caller's transaction. :class:`History` records each
change of a tenant's plan, status or period with what caused it.

Concurrency (PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` serialises writers already). A
Stripe customer's first events arrive within milliseconds on different workers, so
every write that can meet a concurrent copy is race-free by construction:

* inserts are ``INSERT ... ON CONFLICT`` (a concurrent insert of the same key waits for
  the first one, then does nothing);
* locks are taken in one global order: the event's own log row, then the customer
  (:func:`lock_customer`: a transaction-scoped advisory lock, after a shared lock on
  every customer that a sync takes exclusively with :func:`lock_all_customers`), then
  tenant rows (``FOR UPDATE``, sorted by id), then subscription rows. A transaction
  that links, unlinks or mirrors anything of a customer holds that customer's lock
  first, so the link of a customer cannot change under it, and the entitlement a
  :class:`History` reads before and after a change is not moved by another event.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Connection, bindparam, delete, insert, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from webhook_service.models import api_keys, stripe_events, tenant_changes, tenants
from webhook_service.plans import PlanCatalog
from webhook_service.quotas.entitlements import Entitlement, tenant_entitlement
from webhook_service.sql import Prepared, run

log = structlog.get_logger(__name__)

# \Z, not $: "$" also matches before a trailing newline ("tnt_1\n" would pass).
API_KEY_RE = re.compile(r"^nat_pk_[\x21-\x7e]{8,256}\Z")
KEY_HASH_RE = re.compile(r"^[0-9a-f]{64}\Z")
TENANT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")
CUSTOMER_ID_RE = re.compile(r"^cus_[A-Za-z0-9_]{1,250}\Z")


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


# Hot-path statements, built once and run with parameters only.
_TENANT_QUERY = select(tenants).where(tenants.c.id == bindparam("b_tenant"))
_TENANT = Prepared(_TENANT_QUERY)
_TENANT_FOR_UPDATE = Prepared(_TENANT_QUERY.with_for_update())
_TENANT_FOR_KEY = Prepared(
    select(tenants.c.id, tenants.c.stripe_customer_id)
    .select_from(api_keys.join(tenants, api_keys.c.tenant_id == tenants.c.id))
    .where(api_keys.c.key_sha256 == bindparam("b_hash"), tenants.c.active.is_(True))
)
_TENANT_FOR_CUSTOMER_QUERY = select(tenants.c.id).where(
    tenants.c.stripe_customer_id == bindparam("b_customer")
)
_TENANT_FOR_CUSTOMER = Prepared(_TENANT_FOR_CUSTOMER_QUERY)
_TENANT_FOR_CUSTOMER_FOR_UPDATE = Prepared(_TENANT_FOR_CUSTOMER_QUERY.with_for_update())
# The tenant and the present owner of a customer, locked in the order of their ids.
_LINK_ROWS = Prepared(
    select(tenants.c.id, tenants.c.stripe_customer_id)
    .where(
        or_(
            tenants.c.id == bindparam("b_tenant"),
            tenants.c.stripe_customer_id == bindparam("b_customer"),
        )
    )
    .order_by(tenants.c.id)
    .with_for_update()
)
_NEW_TENANT_COLUMNS = ("id", "stripe_customer_id", "active", "created_at", "updated_at")
_ENSURE_TENANT = {
    name: Prepared(
        dialect_insert(tenants)
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(tenants.c.id),
        column_keys=_NEW_TENANT_COLUMNS,
    )
    for name, dialect_insert in (("sqlite", sqlite_insert), ("postgresql", pg_insert))
}
# The customer's lock, taken after the shared lock on all customers (the subquery runs
# first, so the order is fixed); a sync takes the lock on all customers exclusively.
_LOCK_CUSTOMER = Prepared(
    text(
        "SELECT pg_advisory_xact_lock(:b_customer_key) FROM "
        "(SELECT pg_advisory_xact_lock_shared(:b_all_key) OFFSET 0) AS all_customers_first"
    )
)
_LOCK_ALL_CUSTOMERS = Prepared(text("SELECT pg_advisory_xact_lock(:b_all_key)"))
_CUSTOMER_DELETED = Prepared(
    select(stripe_events.c.id)
    .where(
        stripe_events.c.type == "customer.deleted",
        stripe_events.c.object_id == bindparam("b_customer"),
        stripe_events.c.outcome == "processed",
    )
    .limit(1)
)
_CHANGE_COLUMNS = (
    "tenant_id",
    "source",
    "event_id",
    "changed_at",
    "plan",
    "subscription_status",
    "scans_quota",
    "period_start",
    "quota_reset_date",
    "event_type",
    "price_id",
    "price_lookup_key",
    "quantity",
)
_RECORD_CHANGE = Prepared(insert(tenant_changes), column_keys=_CHANGE_COLUMNS)


def advisory_key(name: str) -> int:
    """A signed 64-bit advisory lock key for ``name`` (a collision only serialises more)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big", signed=True)


ALL_CUSTOMERS_KEY = advisory_key("nat:all-customers")


def lock_customer(conn: Connection, customer_id: str | None) -> None:
    """Hold ``customer_id``'s lock until the transaction ends (PostgreSQL; SQLite: no-op).

    Taken before any tenant or subscription row, by every transaction that links,
    unlinks or mirrors something of that customer.
    """
    if customer_id and conn.dialect.name == "postgresql":
        run(
            conn,
            _LOCK_CUSTOMER,
            {
                "b_customer_key": advisory_key("nat:customer:" + customer_id),
                "b_all_key": ALL_CUSTOMERS_KEY,
            },
        )


def lock_all_customers(conn: Connection) -> None:
    """Hold every customer's lock (a sync, the CLI): waits for events in progress."""
    if conn.dialect.name == "postgresql":
        run(conn, _LOCK_ALL_CUSTOMERS, {"b_all_key": ALL_CUSTOMERS_KEY})


def lock_link(conn: Connection, tenant_id: str, customer_id: str) -> list[Any]:
    """Lock ``tenant_id`` and the tenant that has ``customer_id`` (in the order of their ids).

    Called with the customer's lock held: no other transaction can give the customer
    to a tenant meanwhile, so the rows found are all the rows a link changes.
    """
    return run(conn, _LINK_ROWS, {"b_tenant": tenant_id, "b_customer": customer_id}).all()


def get_tenant(conn: Connection, tenant_id: str, *, lock: bool = False) -> Any:
    query = _TENANT_FOR_UPDATE if lock and conn.dialect.name != "sqlite" else _TENANT
    return run(conn, query, {"b_tenant": tenant_id}).one_or_none()


def tenant_for_key(conn: Connection, key_sha256: str) -> Any:
    """The active tenant owning a key hash, or None."""
    return run(conn, _TENANT_FOR_KEY, {"b_hash": key_sha256}).one_or_none()


def tenant_for_customer(
    conn: Connection, customer_id: str | None, *, lock: bool = False
) -> str | None:
    """The tenant linked to ``customer_id``; ``lock``: lock its row (after the customer's)."""
    if not customer_id:
        return None
    query = _TENANT_FOR_CUSTOMER_FOR_UPDATE if lock else _TENANT_FOR_CUSTOMER
    found: str | None = run(conn, query, {"b_customer": customer_id}).scalar_one_or_none()
    return found


def customer_was_deleted(conn: Connection, customer_id: str) -> bool:
    """Has a ``customer.deleted`` of ``customer_id`` been applied? (Stripe never reuses ids.)

    Stripe cancels a deleted customer's subscriptions in the same moment, so their
    ``customer.subscription.deleted`` (or a slow ``checkout.session.completed``) may
    arrive after ``customer.deleted``; such a late event must not link the dead
    customer to its tenant again.
    """
    return run(conn, _CUSTOMER_DELETED, {"b_customer": customer_id}).first() is not None


def ensure_tenant(conn: Connection, tenant_id: str, now: datetime) -> bool:
    """Create the tenant (active, without keys) if it does not exist; True if created.

    ``INSERT ... ON CONFLICT DO NOTHING``: a concurrent creation of the same tenant
    waits for the first one to commit, then finds it there.
    """
    inserted = run(
        conn,
        _ENSURE_TENANT[conn.dialect.name],
        {
            "id": tenant_id,
            "stripe_customer_id": None,
            "active": True,
            "created_at": now,
            "updated_at": now,
        },
    )
    return inserted.first() is not None


def link_customer(
    conn: Connection,
    tenant_id: str,
    customer_id: str,
    now: datetime,
    *,
    previous_owner: str | None = None,
    owner_known: bool = False,
) -> None:
    """Make ``customer_id`` the tenant's customer (taking it from any other tenant).

    ``owner_known``: ``previous_owner`` was read under the customer's lock (lock_link).
    """
    if not owner_known:
        previous_owner = tenant_for_customer(conn, customer_id)
    if previous_owner == tenant_id:
        return
    if previous_owner is not None:
        log.warning(
            "customer_relinked",
            customer_id=customer_id,
            from_tenant=previous_owner,
            to_tenant=tenant_id,
        )
        conn.execute(
            update(tenants)
            .where(tenants.c.id == previous_owner)
            .values(stripe_customer_id=None, updated_at=now)
        )
    conn.execute(
        update(tenants)
        .where(tenants.c.id == tenant_id)
        .values(stripe_customer_id=customer_id, updated_at=now)
    )


def unlink_customer(conn: Connection, customer_id: str, now: datetime) -> str | None:
    tenant_id = tenant_for_customer(conn, customer_id)
    if tenant_id is not None:
        conn.execute(
            update(tenants)
            .where(tenants.c.id == tenant_id)
            .values(stripe_customer_id=None, updated_at=now)
        )
    return tenant_id


def add_key(conn: Connection, tenant_id: str, key_sha256: str, now: datetime) -> None:
    conn.execute(delete(api_keys).where(api_keys.c.key_sha256 == key_sha256))
    conn.execute(
        insert(api_keys).values(key_sha256=key_sha256, tenant_id=tenant_id, created_at=now)
    )


def list_tenants(conn: Connection) -> Sequence[Any]:
    return conn.execute(select(tenants).order_by(tenants.c.id)).all()


def key_count(conn: Connection, tenant_id: str) -> int:
    return len(
        conn.execute(select(api_keys.c.key_sha256).where(api_keys.c.tenant_id == tenant_id)).all()
    )


def history(conn: Connection, tenant_id: str) -> Sequence[Any]:
    return conn.execute(
        select(tenant_changes)
        .where(tenant_changes.c.tenant_id == tenant_id)
        .order_by(tenant_changes.c.id)
    ).all()


@dataclass
class History:
    """Watch tenants before a change; :meth:`record` writes a row for each one that changed."""

    conn: Connection
    catalog: PlanCatalog
    now: datetime
    source: str
    event_id: str | None = None
    event_type: str | None = None
    _before: dict[str, Entitlement | None] = field(default_factory=dict)
    # The customer each tenant was watched through (watch_customer / watch_linked).
    _customer: dict[str, str | None] = field(default_factory=dict)

    def watch(self, *tenant_ids: str | None) -> None:
        for tenant_id in tenant_ids:
            if tenant_id is None or tenant_id in self._before:
                continue
            row = get_tenant(self.conn, tenant_id)
            self._before[tenant_id] = (
                None
                if row is None
                else tenant_entitlement(self.conn, row.stripe_customer_id, self.catalog, self.now)
            )

    def watch_customer(self, customer_id: str | None, *, lock: bool = False) -> str | None:
        """Watch the tenant linked to ``customer_id``; return that tenant (or None).

        ``lock``: lock its row first (the customer's lock is held).
        """
        tenant_id = tenant_for_customer(self.conn, customer_id, lock=lock)
        self.watch_linked(tenant_id, customer_id)
        return tenant_id

    def watch_rows(self, rows: Iterable[Any], created: str | None = None) -> None:
        """Watch tenants from rows already read (and locked); ``created`` was just made."""
        for row in rows:
            if row.id == created:
                self._before.setdefault(row.id, None)
            else:
                self.watch_linked(row.id, row.stripe_customer_id)

    def watch_linked(self, tenant_id: str | None, customer_id: str | None) -> None:
        """Watch ``tenant_id``, known to be linked to ``customer_id`` (no need to read it)."""
        if tenant_id is not None and tenant_id not in self._before:
            self._before[tenant_id] = tenant_entitlement(
                self.conn, customer_id, self.catalog, self.now
            )
            self._customer[tenant_id] = customer_id

    def record(self, *, links_unchanged: bool = False) -> list[str]:
        """Write the changes; return the tenants that changed.

        ``links_unchanged``: the caller linked and unlinked no customer since watching,
        so a tenant watched through its customer still has it (no need to read it again).
        """
        changed = []
        for tenant_id, before in self._before.items():
            if links_unchanged and tenant_id in self._customer:
                customer_id = self._customer[tenant_id]
            else:
                row = get_tenant(self.conn, tenant_id)
                if row is None:
                    continue
                customer_id = row.stripe_customer_id
            after = tenant_entitlement(self.conn, customer_id, self.catalog, self.now)
            if before is not None and before.key() == after.key():
                continue
            changed.append(tenant_id)
            run(
                self.conn,
                _RECORD_CHANGE,
                {
                    "tenant_id": tenant_id,
                    "source": self.source,
                    "event_id": self.event_id,
                    "changed_at": self.now,
                    "plan": after.plan,
                    "subscription_status": after.subscription_status,
                    "scans_quota": after.scans_quota,
                    "period_start": after.window.start,
                    "quota_reset_date": after.window.end,
                    "event_type": self.event_type,
                    "price_id": after.price_id,
                    "price_lookup_key": after.price_lookup_key,
                    "quantity": after.quantity,
                },
            )
        self._before.clear()
        self._customer.clear()
        return changed
