"""Apply a tenant sync in set-based statements (10,000 tenants in a few statements each).

What a sync does, entry by entry, is in :meth:`QuotaService.sync`'s docstring. Here it
is done for the whole request at once, inside the caller's transaction:

1. read what is there: the entries' tenants, the tenants that have the entries'
   customers, the keys of the tenants whose key set is replaced and the present owners
   of every key given (``IN`` lists in chunks);
2. work out in memory the final customer of every tenant touched, and the keys to
   delete and to insert;
3. write: unlink the customers that move (so no two rows ever hold one customer), upsert
   every entry (``INSERT ... ON CONFLICT (id) DO UPDATE``, executemany), delete and
   insert the keys that change, and write the history rows.

History: a sync changes no subscription, and a tenant's entitlement depends only on the
subscriptions of the customer it is linked to (not on ``active``). So only a tenant that
is created, or whose customer link changes, can have a changed entitlement; those, and
only those, are compared (before and after from one read of the customers' subscriptions).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from sqlalchemy import Connection, any_, bindparam, delete, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from webhook_service.models import api_keys, subscriptions, tenant_changes, tenants
from webhook_service.plans import PlanCatalog
from webhook_service.quotas.entitlements import Entitlement, entitlement

if TYPE_CHECKING:
    from webhook_service.quotas.service import SyncEntry

log = structlog.get_logger(__name__)

# Values per IN list: below SQLite's smallest variable limit (999 before 3.32) and far
# below PostgreSQL's 65,535 parameters per statement.
IN_CHUNK = 900
T = TypeVar("T")


def chunks(values: Sequence[T], size: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _among(conn: Connection, column: Any, values: Iterable[str]) -> Iterator[Any]:
    """Conditions ``column IN values``: PostgreSQL takes them as one array parameter
    (``= ANY``), SQLite as ``IN`` lists of at most :data:`IN_CHUNK` values."""
    ordered = sorted(set(values))
    if not ordered:
        return
    if conn.dialect.name == "postgresql":
        yield column == any_(bindparam(None, ordered, type_=ARRAY(column.type), unique=True))
        return
    for part in chunks(ordered):
        yield column.in_(part)


def _rows_in(conn: Connection, query: Any, column: Any, values: Iterable[str]) -> list[Any]:
    """``query`` restricted to ``column IN values``."""
    found: list[Any] = []
    for condition in _among(conn, column, values):
        found.extend(conn.execute(query.where(condition)).all())
    return found


def _insert_rows(
    conn: Connection,
    table: Any,
    rows: Sequence[dict[str, Any]],
    on_conflict: Callable[[Any], Any] | None = None,
) -> None:
    """Insert ``rows`` (dicts of the same keys) in as few statements as each engine likes.

    PostgreSQL: one ``INSERT ... SELECT * FROM unnest(<one array per column>)``, a
    single statement with one parameter per column whatever the number of rows.
    SQLite: the driver's ``executemany`` (:func:`_execute_many`). ``on_conflict`` adds
    an ``ON CONFLICT`` clause to the dialect's insert.
    """
    if not rows:
        return
    keys = list(rows[0])
    if conn.dialect.name == "postgresql":
        # A value the same in every row (the sync's time, a source) is one parameter.
        first = rows[0]
        shared = [k for k in keys[1:] if all(row[k] is first[k] for row in rows)]
        varying = [k for k in keys if k not in shared]  # the first key at least
        source = (
            func.unnest(
                *(
                    bindparam(
                        f"u_{key}", [row[key] for row in rows], type_=ARRAY(table.c[key].type)
                    )
                    for key in varying
                )
            )
            .table_valued(*varying)
            .render_derived(name="rows")
        )
        columns = {k: source.c[k] for k in varying} | {
            k: bindparam(f"s_{k}", first[k], type_=table.c[k].type) for k in shared
        }
        unnested = pg_insert(table).from_select(
            keys, select(*(columns[k] for k in keys)).select_from(source)
        )
        conn.execute(on_conflict(unnested) if on_conflict is not None else unnested)
        return
    statement = sqlite_insert(table)
    _execute_many(conn, on_conflict(statement) if on_conflict else statement, table, rows)


def _execute_many(
    conn: Connection, statement: Any, table: Any, rows: Sequence[dict[str, Any]]
) -> None:
    """Run ``statement`` once per row through the driver's ``executemany``.

    ``Connection.execute`` with a list of 10,000 rows spends most of its time sending
    each value of each row through its column's bind processor; here a value that is
    the same object in every row (the sync's ``now``) is processed once, with the same
    processors (the dialect's), so values are stored exactly as ``execute`` stores them.
    """
    if not rows:
        return
    dialect = conn.dialect
    keys = list(rows[0])
    compiled = statement.compile(dialect=dialect, column_keys=keys)
    processors = {
        key: processor
        for key in keys
        if (processor := table.c[key].type.dialect_impl(dialect).bind_processor(dialect))
    }
    first = rows[0]
    shared: dict[str, Any] = {}
    for key in keys:
        if all(row[key] is first[key] for row in rows):
            same = first[key]
            shared[key] = processors[key](same) if key in processors and same is not None else same

    def param(row: dict[str, Any], key: str) -> Any:
        if key in shared:
            return shared[key]
        raw = row[key]
        return processors[key](raw) if key in processors and raw is not None else raw

    names = list(compiled.positiontup or []) if compiled.positional else keys
    processed = [tuple(param(row, name) for name in names) for row in rows]
    if compiled.positional:
        conn.exec_driver_sql(compiled.string, processed)
    else:
        conn.exec_driver_sql(
            compiled.string, [dict(zip(names, row, strict=True)) for row in processed]
        )


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


def plan_sync(conn: Connection, entries: Sequence[SyncEntry]) -> SyncPlan:
    """Read the present state of everything the entries touch; work out the writes."""
    ids = [entry.tenant_id for entry in entries]
    customers = [entry.customer_id for entry in entries if entry.customer_id]
    link_query = select(tenants.c.id, tenants.c.stripe_customer_id)
    existing = {
        row.id: row.stripe_customer_id for row in _rows_in(conn, link_query, tenants.c.id, ids)
    }
    owners = {
        row.stripe_customer_id: row.id
        for row in _rows_in(conn, link_query, tenants.c.stripe_customer_id, customers)
    }
    before: dict[str, str | None] = dict(existing)
    for customer, owner in owners.items():
        before[owner] = customer
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
    # The order History.watch saw them in: the entries' tenants, then the other owners.
    order = dict.fromkeys(ids)
    order.update(dict.fromkeys(owners[c] for c in customers if c in owners))
    after = {t: after[t] for t in order}
    unlink = sorted(t for t, c in before.items() if c is not None and after.get(t) != c)

    # Keys: the tenants whose key set is replaced (keys given, or inactive: none).
    wanted: dict[str, str] = {}
    replaced: list[str] = []
    for entry in entries:
        if not entry.active:
            replaced.append(entry.tenant_id)
        elif entry.key_hashes is not None:
            replaced.append(entry.tenant_id)
            wanted.update(dict.fromkeys(entry.key_hashes, entry.tenant_id))
    key_query = select(api_keys.c.key_sha256, api_keys.c.tenant_id)
    present = {
        row.key_sha256: row.tenant_id
        for row in _rows_in(conn, key_query, api_keys.c.tenant_id, replaced)
        + _rows_in(conn, key_query, api_keys.c.key_sha256, wanted)
    }
    delete_keys = sorted(h for h, owner in present.items() if wanted.get(h) != owner)
    insert_keys = sorted((h, t) for h, t in wanted.items() if present.get(h) != t)
    return SyncPlan(created, before, after, unlink, relinked, delete_keys, insert_keys)


def _entitlements(
    conn: Connection, customers: Iterable[str | None], catalog: PlanCatalog, now: datetime
) -> dict[str | None, Entitlement]:
    """The entitlement each customer's subscriptions grant (None: no customer)."""
    wanted = {c for c in customers if c}
    by_customer: dict[str, list[Any]] = {c: [] for c in wanted}
    query = select(subscriptions).where(subscriptions.c.status.is_not(None))
    for sub in _rows_in(conn, query, subscriptions.c.customer_id, wanted):
        by_customer[sub.customer_id].append(sub)
    none = entitlement([], catalog, now)  # most customers of a sync have no subscription
    result: dict[str | None, Entitlement] = {
        c: entitlement(subs, catalog, now) if subs else none for c, subs in by_customer.items()
    }
    result[None] = none
    return result


def apply_sync(
    conn: Connection, entries: Sequence[SyncEntry], catalog: PlanCatalog, now: datetime
) -> int:
    """Apply validated entries in the caller's transaction; return how many were created."""
    plan = plan_sync(conn, entries)
    for customer, from_tenant, to_tenant in plan.relinked:
        log.warning(
            "customer_relinked", customer_id=customer, from_tenant=from_tenant, to_tenant=to_tenant
        )
    for condition in _among(conn, tenants.c.id, plan.unlink):
        conn.execute(
            update(tenants).where(condition).values(stripe_customer_id=None, updated_at=now)
        )

    def keep_unnamed_links(upsert: Any) -> Any:
        return upsert.on_conflict_do_update(
            index_elements=[tenants.c.id],
            set_={
                "active": upsert.excluded.active,
                # No customer given: the tenant keeps its link (unless it just moved away).
                "stripe_customer_id": func.coalesce(
                    upsert.excluded.stripe_customer_id, tenants.c.stripe_customer_id
                ),
                "updated_at": upsert.excluded.updated_at,
            },
        )

    _insert_rows(
        conn,
        tenants,
        [
            {
                "id": entry.tenant_id,
                "stripe_customer_id": entry.customer_id,
                "active": entry.active,
                "created_at": now,
                "updated_at": now,
            }
            for entry in entries
        ],
        keep_unnamed_links,
    )
    for condition in _among(conn, api_keys.c.key_sha256, plan.delete_keys):
        conn.execute(delete(api_keys).where(condition))
    _insert_rows(
        conn,
        api_keys,
        [{"key_sha256": h, "tenant_id": t, "created_at": now} for h, t in plan.insert_keys],
    )
    _record_history(conn, plan, catalog, now)
    return len(plan.created)


def _record_history(conn: Connection, plan: SyncPlan, catalog: PlanCatalog, now: datetime) -> None:
    """A history row for each tenant created, or whose entitlement moved with its link."""
    created = set(plan.created)
    candidates = [t for t in plan.after if t in created or plan.after[t] != plan.before.get(t)]
    ents = _entitlements(
        conn,
        [plan.after[t] for t in candidates] + [plan.before.get(t) for t in candidates],
        catalog,
        now,
    )
    rows = []
    for tenant_id in candidates:
        after = ents[plan.after[tenant_id]]
        if tenant_id not in created and ents[plan.before.get(tenant_id)].key() == after.key():
            continue
        rows.append(
            {
                "tenant_id": tenant_id,
                "source": "sync",
                "event_id": None,
                "changed_at": now,
                "plan": after.plan,
                "subscription_status": after.subscription_status,
                "scans_quota": after.scans_quota,
                "period_start": after.window.start,
                "quota_reset_date": after.window.end,
            }
        )
    _insert_rows(conn, tenant_changes, rows)
