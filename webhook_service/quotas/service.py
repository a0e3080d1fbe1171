"""The quota service: authenticate API keys, report usage, spend scans, sync tenants."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from webhook_service import metrics
from webhook_service.db import Database
from webhook_service.errors import (
    IdempotencyKeyReused,
    InvalidApiKey,
    InvalidRequest,
    QuotaExceeded,
)
from webhook_service.models import scan_spends, tenants, utcnow
from webhook_service.plans import PlanCatalog
from webhook_service.quotas.entitlements import Usage, rfc3339, tenant_usage
from webhook_service.quotas.sync import apply_sync
from webhook_service.quotas.tenants import (
    API_KEY_RE,
    CUSTOMER_ID_RE,
    KEY_HASH_RE,
    TENANT_ID_RE,
    History,
    add_key,
    ensure_tenant,
    get_tenant,
    hash_key,
    history,
    key_count,
    link_customer,
    list_tenants,
    lock_all_customers,
    tenant_for_key,
)
from webhook_service.sql import Prepared, run

MAX_SPEND_COUNT = 1000
_PRIOR_SPEND = Prepared(
    select(scan_spends.c.response, scan_spends.c.request_sha256).where(
        scan_spends.c.tenant_id == bindparam("b_tenant"),
        scan_spends.c.idempotency_key == bindparam("b_key"),
    )
)
# ON CONFLICT: a spend with the same idempotency key is never recorded twice, even by a
# transaction that would not hold the tenant's lock; RETURNING says whether this one was.
_RECORD_SPEND = {
    name: Prepared(
        dialect_insert(scan_spends)
        .on_conflict_do_nothing(index_elements=["tenant_id", "idempotency_key"])
        .returning(scan_spends.c.id),
        column_keys=(
            "tenant_id",
            "count",
            "spent_at",
            "idempotency_key",
            "request_sha256",
            "response",
        ),
    )
    for name, dialect_insert in (("sqlite", sqlite_insert), ("postgresql", pg_insert))
}
MAX_SYNC_TENANTS = 10_000


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
class SyncEntry:
    tenant_id: str
    key_hashes: frozenset[str] | None
    customer_id: str | None
    active: bool


@dataclass(frozen=True)
class SyncResult:
    synced: int
    created: int
    updated: int


@dataclass(frozen=True)
class SpendResult:
    body: dict[str, Any]
    replayed: bool


# An error body names at most this many problems (and counts them all): a rejected
# request of megabytes must not be echoed back in an error of hundreds of kilobytes.
MAX_SYNC_PROBLEMS_SHOWN = 20
MAX_ECHOED_NAME = 64


def _problem(index: int, tenant_id: object, field_name: str, message: str) -> dict[str, Any]:
    if len(field_name) > MAX_ECHOED_NAME:
        field_name = field_name[:MAX_ECHOED_NAME] + "..."
    problem: dict[str, Any] = {"index": index, "field": field_name, "message": message}
    # Only a well-formed tenant id is echoed; a malformed one may be any text of any size.
    if isinstance(tenant_id, str) and TENANT_ID_RE.match(tenant_id):
        problem["tenant_id"] = tenant_id
    return problem


def parse_sync_request(body: object) -> list[SyncEntry]:
    """Validate a whole sync body; raise INVALID_REQUEST with every problem found."""
    if not isinstance(body, dict) or not isinstance(body.get("tenants"), list):
        raise InvalidRequest(
            "The body must be a JSON object with a 'tenants' list.",
            details=[{"field": "tenants", "message": "required list"}],
        )
    raw_entries: list[Any] = body["tenants"]
    if len(raw_entries) > MAX_SYNC_TENANTS:
        raise InvalidRequest(
            f"At most {MAX_SYNC_TENANTS} tenants per request.",
            details=[{"field": "tenants", "message": "too many entries"}],
        )
    problems: list[dict[str, Any]] = []
    entries: list[SyncEntry] = []
    seen_tenants: set[str] = set()
    key_owner: dict[str, str] = {}
    customer_owner: dict[str, str] = {}
    for index, raw in enumerate(raw_entries):
        if not isinstance(raw, dict):
            problems.append(_problem(index, None, "", "each entry must be an object"))
            continue
        tenant_id = raw.get("tenant_id")
        start = len(problems)
        if not isinstance(tenant_id, str) or not TENANT_ID_RE.match(tenant_id):
            problems.append(
                _problem(index, tenant_id, "tenant_id", "required; 1-64 of A-Z a-z 0-9 _ . : -")
            )
        elif tenant_id in seen_tenants:
            problems.append(_problem(index, tenant_id, "tenant_id", "appears more than once"))
        unknown = set(raw) - {
            "tenant_id",
            "api_keys",
            "api_key_sha256",
            "stripe_customer_id",
            "active",
        }
        if unknown:
            problems.append(_problem(index, tenant_id, ",".join(sorted(unknown)), "unknown field"))
        hashes: set[str] | None = None
        if "api_keys" in raw:
            keys = raw["api_keys"]
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                problems.append(_problem(index, tenant_id, "api_keys", "must be a list of strings"))
            else:
                bad = [i for i, k in enumerate(keys) if not API_KEY_RE.match(k)]
                if bad:
                    problems.append(
                        _problem(
                            index,
                            tenant_id,
                            "api_keys",
                            f"keys at positions {bad} are not nat_pk_ keys (8-256 printable "
                            "characters after the prefix, no whitespace)",
                        )
                    )
                hashes = {hash_key(k) for k in keys}
        if "api_key_sha256" in raw:
            digests = raw["api_key_sha256"]
            if not isinstance(digests, list) or not all(
                isinstance(d, str) and KEY_HASH_RE.match(d) for d in digests
            ):
                problems.append(
                    _problem(
                        index,
                        tenant_id,
                        "api_key_sha256",
                        "must be a list of lowercase hex SHA-256 digests",
                    )
                )
            else:
                hashes = (hashes or set()) | set(digests)
        customer = raw.get("stripe_customer_id")
        if customer is not None and (
            not isinstance(customer, str) or not CUSTOMER_ID_RE.match(customer)
        ):
            problems.append(
                _problem(index, tenant_id, "stripe_customer_id", "must be null or a cus_ id")
            )
        active = raw.get("active", True)
        if not isinstance(active, bool):
            problems.append(_problem(index, tenant_id, "active", "must be true or false"))
        if len(problems) > start or not isinstance(tenant_id, str):
            continue
        seen_tenants.add(tenant_id)
        for digest in hashes or ():
            if key_owner.setdefault(digest, tenant_id) != tenant_id:
                problems.append(
                    _problem(
                        index, tenant_id, "api_keys", f"a key is also given to {key_owner[digest]}"
                    )
                )
                break
        if customer is not None and customer_owner.setdefault(customer, tenant_id) != tenant_id:
            problems.append(
                _problem(
                    index,
                    tenant_id,
                    "stripe_customer_id",
                    f"also given to {customer_owner[customer]}",
                )
            )
        entries.append(
            SyncEntry(
                tenant_id=tenant_id,
                key_hashes=frozenset(hashes) if hashes is not None else None,
                customer_id=customer,
                active=bool(active),
            )
        )
    if problems:
        shown = problems[:MAX_SYNC_PROBLEMS_SHOWN]
        more = "" if len(shown) == len(problems) else f" (the first {len(shown)} are listed)"
        raise InvalidRequest(
            f"{len(problems)} problem(s) in the tenants list{more}; nothing was applied.",
            details=shown,
            problem_count=len(problems),
        )
    return entries


def _prior_spend(
    conn: Connection, tenant_id: str, idempotency_key: str, fingerprint: str
) -> SpendResult | None:
    """The first answer of a spend under ``idempotency_key``, if any; a different
    request under the same key is refused (``IDEMPOTENCY_KEY_REUSED``)."""
    prior = run(conn, _PRIOR_SPEND, {"b_tenant": tenant_id, "b_key": idempotency_key}).one_or_none()
    if prior is None:
        return None
    # Rows from before migration 0004 have no fingerprint: replayed as before.
    if prior.request_sha256 not in (None, fingerprint):
        raise IdempotencyKeyReused()
    return SpendResult(json.loads(prior.response), replayed=True)


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
            row = tenant_for_key(conn, key_hash)
        if row is None:
            raise InvalidApiKey()
        return TenantRef(row.id, row.stripe_customer_id)

    def usage(self, tenant: TenantRef) -> Usage:
        with self.database.transaction() as conn:
            return tenant_usage(conn, tenant.id, tenant.customer_id, self.catalog, self.clock())

    def usage_for_key(self, api_key: str | None) -> Usage:
        """Authenticate ``api_key`` and report its tenant's usage, in one transaction."""
        key_hash = self._key_hash(api_key)
        with self.database.transaction() as conn:
            row = tenant_for_key(conn, key_hash)
            if row is None:
                raise InvalidApiKey()
            return tenant_usage(conn, row.id, row.stripe_customer_id, self.catalog, self.clock())

    def spend(self, tenant: TenantRef, count: int, idempotency_key: str | None) -> SpendResult:
        """Spend ``count`` scans, never past the quota, at most once per idempotency key."""
        with self.database.transaction(write=True) as conn:
            row = get_tenant(conn, tenant.id, lock=True)  # serialises spends of one tenant
            if row is None or not row.active:
                raise InvalidApiKey()
            fingerprint = spend_fingerprint(count)
            if idempotency_key is not None:
                replay = _prior_spend(conn, tenant.id, idempotency_key, fingerprint)
                if replay is not None:
                    return replay
            now = self.clock()
            usage = tenant_usage(conn, tenant.id, row.stripe_customer_id, self.catalog, now)
            if usage.scans_remaining < count:
                metrics.QUOTA_EXCEEDED.inc()
                reset = usage.entitlement.window.end
                raise QuotaExceeded(
                    f"Monthly scan quota exhausted. Quota resets on {reset.date().isoformat()}.",
                    quota_reset_date=rfc3339(reset),
                )
            body = Usage(tenant.id, usage.entitlement, usage.scans_used + count).body()
            recorded = run(
                conn,
                _RECORD_SPEND[conn.dialect.name],
                {
                    "tenant_id": tenant.id,
                    "count": count,
                    "spent_at": usage.entitlement.spend_time(now),
                    "idempotency_key": idempotency_key,
                    "request_sha256": fingerprint if idempotency_key is not None else None,
                    "response": json.dumps(body),
                },
            ).first()
            if recorded is None and idempotency_key is not None:
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
            lock_all_customers(conn)  # links move: no event of any customer meanwhile
            created = apply_sync(conn, entries, self.catalog, self.clock())
        return SyncResult(len(entries), created, len(entries) - created)

    def list_tenants(self) -> list[tuple[Any, Usage, int]]:
        with self.database.transaction() as conn:
            now = self.clock()
            return [
                (
                    row,
                    tenant_usage(conn, row.id, row.stripe_customer_id, self.catalog, now),
                    key_count(conn, row.id),
                )
                for row in list_tenants(conn)
            ]

    def report(self, tenant_id: str) -> tuple[Any, Usage, int, Sequence[Any]] | None:
        """A tenant, its usage now, how many keys it has, and its change history."""
        with self.database.transaction() as conn:
            row = get_tenant(conn, tenant_id)
            if row is None:
                return None
            usage = tenant_usage(conn, row.id, row.stripe_customer_id, self.catalog, self.clock())
            return row, usage, key_count(conn, row.id), history(conn, row.id)

    def add_tenant(self, tenant_id: str, api_key: str, customer_id: str | None) -> bool:
        """Create or update a tenant from the CLI, adding one key; True if created."""
        with self.database.transaction(write=True) as conn:
            now = self.clock()
            lock_all_customers(conn)  # the same lock order as a sync
            history = History(conn, self.catalog, now, source="cli")
            history.watch(tenant_id)
            history.watch_customer(customer_id)
            created = ensure_tenant(conn, tenant_id, now)
            conn.execute(
                update(tenants).where(tenants.c.id == tenant_id).values(active=True, updated_at=now)
            )
            add_key(conn, tenant_id, hash_key(api_key), now)
            if customer_id:
                link_customer(conn, tenant_id, customer_id, now)
            history.record()
        return created
