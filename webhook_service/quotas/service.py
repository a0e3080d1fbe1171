"""The quota service: authenticate API keys, report usage, spend scans, sync tenants.

Each operation is one transaction: it reads through ``quotas/store.py``, computes with
``quotas/entitlements.py`` and writes through the store again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from webhook_service import metrics
from webhook_service.db import Database
from webhook_service.errors import IdempotencyKeyReused, InvalidApiKey, QuotaExceeded
from webhook_service.models import utcnow
from webhook_service.plans import PlanCatalog
from webhook_service.quotas import decisions, store
from webhook_service.quotas.entitlements import Usage, rfc3339
from webhook_service.quotas.history import Entitlements, History
from webhook_service.quotas.sync import MAX_SYNC_TENANTS, SyncEntry, apply_sync
from webhook_service.quotas.tenants import API_KEY_RE, hash_key

__all__ = ["MAX_SPEND_COUNT", "MAX_SYNC_TENANTS", "QuotaService", "SyncEntry", "TenantRef"]

MAX_SPEND_COUNT = 1000


def spend_fingerprint(count: int) -> str:
    """SHA-256 of the canonical spend request (operation and count), kept with its key.

    What the request means, not how it was spelled: ``{}`` and ``{"count": 1}`` are
    the same request.
    """
    return hashlib.sha256(f"POST /api/v1/usage/scans\ncount={count}".encode()).hexdigest()


@dataclass(frozen=True)
class TenantRef:
    id: str
    customer_id: str | None


@dataclass(frozen=True)
class SyncResult:
    synced: int
    created: int
    updated: int


@dataclass(frozen=True)
class SpendResult:
    body: dict[str, Any]
    replayed: bool


def _prior_spend(
    conn: Connection, tenant_id: str, idempotency_key: str, fingerprint: str
) -> SpendResult | None:
    """The first answer of a spend under ``idempotency_key``, if any; a different
    request under the same key is refused (``IDEMPOTENCY_KEY_REUSED``)."""
    prior = store.prior_spend(conn, tenant_id, idempotency_key)
    if prior is None:
        return None
    # Rows from before migration 0004 have no fingerprint: replayed as before.
    if prior.request_sha256 not in (None, fingerprint):
        raise IdempotencyKeyReused()
    return SpendResult(json.loads(prior.response), replayed=True)


def _usage(
    conn: Connection, tenant_id: str, customer_id: str | None, catalog: PlanCatalog, now: datetime
) -> Usage:
    """The tenant's entitlement at ``now`` and the scans spent in its window."""
    ent = Entitlements(conn, catalog, now).of(customer_id)
    return Usage(tenant_id, ent, store.scans_used(conn, tenant_id, ent))


class QuotaService:
    """Every tenant-facing operation, each in one transaction."""

    def __init__(
        self, database: Database, catalog: PlanCatalog, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.database = database
        self.catalog = catalog
        self.clock = clock

    @staticmethod
    def _key_hash(api_key: str | None) -> str:
        if not api_key or not API_KEY_RE.match(api_key):
            raise InvalidApiKey()
        return hash_key(api_key)

    def authenticate(self, api_key: str | None) -> TenantRef:
        """The active tenant that owns ``api_key``; INVALID_API_KEY otherwise."""
        key_hash = self._key_hash(api_key)
        with self.database.transaction() as conn:
            row = store.tenant_for_key(conn, key_hash)
        if row is None:
            raise InvalidApiKey()
        return TenantRef(row.id, row.stripe_customer_id)

    def usage(self, tenant: TenantRef) -> Usage:
        with self.database.transaction() as conn:
            return _usage(conn, tenant.id, tenant.customer_id, self.catalog, self.clock())

    def usage_for_key(self, api_key: str | None) -> Usage:
        """Authenticate ``api_key`` and report its tenant's usage, in one transaction."""
        key_hash = self._key_hash(api_key)
        with self.database.transaction() as conn:
            row = store.tenant_for_key(conn, key_hash)
            if row is None:
                raise InvalidApiKey()
            return _usage(conn, row.id, row.stripe_customer_id, self.catalog, self.clock())

    def spend(self, tenant: TenantRef, count: int, idempotency_key: str | None) -> SpendResult:
        """Spend ``count`` scans, never past the quota, at most once per idempotency key."""
        with self.database.transaction(write=True) as conn:
            row = store.get_tenant(conn, tenant.id, lock=True)  # serialises spends of one tenant
            if row is None or not row.active:
                raise InvalidApiKey()
            fingerprint = spend_fingerprint(count)
            if idempotency_key is not None:
                replay = _prior_spend(conn, tenant.id, idempotency_key, fingerprint)
                if replay is not None:
                    return replay
            now = self.clock()
            usage = _usage(conn, tenant.id, row.stripe_customer_id, self.catalog, now)
            if usage.scans_remaining < count:
                metrics.QUOTA_EXCEEDED.inc()
                reset = usage.entitlement.window.end
                raise QuotaExceeded(
                    f"Monthly scan quota exhausted. Quota resets on {reset.date().isoformat()}.",
                    quota_reset_date=rfc3339(reset),
                )
            body = Usage(tenant.id, usage.entitlement, usage.scans_used + count).body()
            recorded = store.record_spend(
                conn,
                tenant.id,
                count,
                usage.entitlement.spend_time(now),
                idempotency_key,
                fingerprint if idempotency_key is not None else None,
                json.dumps(body),
            )
            if not recorded and idempotency_key is not None:
                # The same key was spent meanwhile: answer as it was (or refuse a reuse).
                replay = _prior_spend(conn, tenant.id, idempotency_key, fingerprint)
                if replay is None:  # a conflict is a committed row: never reached
                    raise RuntimeError("a spend's idempotency key conflicted with no row")
                return replay
        metrics.SCAN_SPENDS.inc(count)
        return SpendResult(body, replayed=False)

    def sync(self, entries: Sequence[SyncEntry]) -> SyncResult:
        """Apply a validated sync request, all or nothing, in set-based statements.

        Per entry: the tenant is created if new and gets ``active``; ``api_keys`` (and
        ``api_key_sha256``) replace its key set (a key moves if another tenant had it);
        inactive revokes every key; a customer given moves to it from any other tenant
        (``customer_relinked``), none given leaves its link. See quotas/sync.py.
        """
        with self.database.transaction(write=True) as conn:
            store.lock_all_customers(conn)  # links move: no event of any customer meanwhile
            created = apply_sync(conn, entries, self.catalog, self.clock())
        return SyncResult(len(entries), created, len(entries) - created)

    def list_tenants(self) -> list[tuple[Any, Usage, int]]:
        with self.database.transaction() as conn:
            now = self.clock()
            return [
                (
                    row,
                    _usage(conn, row.id, row.stripe_customer_id, self.catalog, now),
                    store.key_count(conn, row.id),
                )
                for row in store.list_tenants(conn)
            ]

    def report(self, tenant_id: str) -> tuple[Any, Usage, int, Sequence[Any]] | None:
        """A tenant, its usage now, how many keys it has, and its change history."""
        with self.database.transaction() as conn:
            row = store.get_tenant(conn, tenant_id)
            if row is None:
                return None
            usage = _usage(conn, row.id, row.stripe_customer_id, self.catalog, self.clock())
            return row, usage, store.key_count(conn, row.id), store.history(conn, row.id)

    def add_tenant(self, tenant_id: str, api_key: str, customer_id: str | None) -> bool:
        """Create or update a tenant from the CLI, adding one key; True if created."""
        with self.database.transaction(write=True) as conn:
            now = self.clock()
            store.lock_all_customers(conn)  # the same lock order as a sync
            ents = Entitlements(conn, self.catalog, now)
            history = History("cli", now)
            row = store.get_tenant(conn, tenant_id)
            before = {tenant_id: None if row is None else row.stripe_customer_id}
            history.watch(tenant_id, None if row is None else ents.of(row.stripe_customer_id))
            move = None
            if customer_id:
                owner = store.tenant_for_customer(conn, customer_id)
                if owner is not None and owner != tenant_id:
                    before[owner] = customer_id
                    history.watch(owner, ents.of(customer_id))
                move = decisions.move_customer(customer_id, owner, tenant_id)
            created = store.ensure_tenant(conn, tenant_id, now)
            store.activate_tenant(conn, tenant_id, now)
            store.add_key(conn, tenant_id, hash_key(api_key), now)
            if move is not None:
                store.move_customer(conn, move, now)
            after = {
                tenant: linked if move is None else move.customer_after(tenant, linked)
                for tenant, linked in before.items()
            }
            history.record(conn, {tenant: ents.of(linked) for tenant, linked in after.items()})
        return created
