"""Every SQL statement of the quota domain, and the locks it takes.

Tables (``models.py``): ``tenants``, ``api_keys``, ``subscriptions`` (the mirror of each
Stripe subscription), ``scan_spends``, ``tenant_changes`` (the history) and
``deleted_customers``. Every function works in the caller's transaction and returns
plain values: rows, :class:`Subscription` records, ids, counts.

Query style, one for all: SQLAlchemy Core statements. Every statement but the sync's is
built once, at import, its SQL fixed: its values are bind parameters named ``b_*``
(``b_<column>`` for a value written to a column), and INSERT and UPDATE statements name
every column they set. They all run through :func:`_execute` as
:class:`webhook_service.sql.Prepared` statements, compiled once per dialect
(``Connection.execute`` of the same statements costs measurably more CPU per request:
``bench/ANALYSIS.md``). The sync's bulk statements (``IN`` lists, arrays, ``executemany`` of any
length) are built per call and run with ``Connection.execute``.

Concurrency (PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` serialises writers already). A
Stripe customer's first events arrive within milliseconds on different workers, so
every write that can meet a concurrent copy is race-free by construction:

* inserts are ``INSERT ... ON CONFLICT`` (a concurrent insert of the same key waits for
  the first one, then does nothing);
* locks are taken in one global order: the event's own log row, then the customer
  (:func:`lock_customer`: a transaction-scoped advisory lock, after a shared lock on
  every customer that a sync takes exclusively with :func:`lock_all_customers`, both
  waited for up to :data:`ALL_CUSTOMERS_WAIT_S`), then tenant rows (``FOR UPDATE``,
  sorted by id), then subscription rows. A transaction that links, unlinks or mirrors
  anything of a customer, or records its deletion, holds that customer's lock first,
  so the link of a customer cannot change under it, and the entitlement read before
  and after a change is not moved by another event.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, TypeVar

import structlog
from sqlalchemy import (
    BindParameter,
    Column,
    Connection,
    Executable,
    Insert,
    Update,
    any_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import OperationalError

from webhook_service.models import (
    api_keys,
    deleted_customers,
    scan_spends,
    subscriptions,
    tenant_changes,
    tenants,
)
from webhook_service.quotas.decisions import CustomerMove
from webhook_service.quotas.entitlements import Entitlement, Subscription
from webhook_service.sql import Prepared, Rows, run

log = structlog.get_logger(__name__)
T = TypeVar("T")


def _execute(
    conn: Connection, statement: Executable, params: Mapping[str, Any] | None = None
) -> Rows:
    """Run a statement built at import in the caller's transaction, as a
    :class:`~webhook_service.sql.Prepared` statement (compiled once per dialect).

    Its result is read with ``all``, ``first``, ``one``, ``one_or_none``, ``scalar_one``
    or ``scalar_one_or_none`` only, and its rows by attribute or position.
    """
    prepared = _PREPARED.get(id(statement))
    if prepared is None or prepared.statement is not statement:
        # INSERT and UPDATE name every column they set: compile no other column.
        keys = () if isinstance(statement, (Insert, Update)) else None
        prepared = _PREPARED[id(statement)] = Prepared(statement, column_keys=keys)
    return run(conn, prepared, params)


# Keyed by the statement's id; the entry holds the statement, so the id stays its own.
_PREPARED: dict[int, Prepared] = {}


def _param(column: Column[Any]) -> BindParameter[Any]:
    """The bind parameter ``b_<column>`` that carries a value written to ``column``."""
    return bindparam(f"b_{column.key}", type_=column.type)


def _values(columns: Iterable[Column[Any]]) -> dict[str, BindParameter[Any]]:
    return {column.key: _param(column) for column in columns}


def _by_dialect(build: Callable[[Any], Executable]) -> dict[str, Executable]:
    """One statement per dialect (``ON CONFLICT`` is each dialect's own insert)."""
    return {"sqlite": build(sqlite_insert), "postgresql": build(pg_insert)}


# ------------------------------------------------------------------------------- locks

# How long a transaction keeps waiting for the lock on all customers, which a sync holds
# for its whole transaction: the largest request holds it for seconds, several times the
# server's lock_timeout on a busy machine (README, "Tenant sync"). The wait is made of
# attempts, each one statement bounded like any other (the server's lock_timeout, then
# statement_timeout and the answer deadline: a server that stops answering still fails
# the attempt under way), in a savepoint, so that an attempt that times out leaves the
# transaction usable. A new attempt starts only while this budget lasts: the whole wait
# ends within it plus one lock_timeout, then fails like any lock wait (503).
ALL_CUSTOMERS_WAIT_S = 10.0
# PostgreSQL's lock_not_available: a lock wait that reached lock_timeout.
_LOCK_NOT_AVAILABLE = "55P03"

# One statement in the usual case (no sync running): the shared lock on all customers
# if it is free (the subquery runs first, so the order is fixed), then, only if it was
# taken, the customer's lock. Not taken: :func:`lock_customer` waits for it first.
_LOCK_CUSTOMER = text(
    "SELECT got, CASE WHEN got THEN pg_advisory_xact_lock(:b_customer_key) END FROM "
    "(SELECT pg_try_advisory_xact_lock_shared(:b_all_key) AS got OFFSET 0) AS all_customers_first"
)
_LOCK_ONE_CUSTOMER = text("SELECT pg_advisory_xact_lock(:b_customer_key)")
_LOCK_ALL_CUSTOMERS_SHARED = text("SELECT pg_advisory_xact_lock_shared(:b_all_key)")
_LOCK_ALL_CUSTOMERS = text("SELECT pg_advisory_xact_lock(:b_all_key)")


def advisory_key(name: str) -> int:
    """A signed 64-bit advisory lock key for ``name`` (a collision only serialises more)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big", signed=True)


ALL_CUSTOMERS_KEY = advisory_key("nat:all-customers")


def _wait_for_all_customers(conn: Connection, statement: Executable) -> None:
    """Take the lock on all customers with ``statement`` (shared or exclusive), waiting
    for whoever holds it for up to :data:`ALL_CUSTOMERS_WAIT_S` (see there)."""
    started = time.monotonic()
    while True:
        try:
            with conn.begin_nested():
                _execute(conn, statement, {"b_all_key": ALL_CUSTOMERS_KEY})
            return
        except OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) != _LOCK_NOT_AVAILABLE:
                raise
            waited = time.monotonic() - started
            if waited >= ALL_CUSTOMERS_WAIT_S:
                log.warning("all_customers_lock_wait_exhausted", waited_s=round(waited, 2))
                raise


def lock_customer(conn: Connection, customer_id: str | None) -> None:
    """Hold ``customer_id``'s lock until the transaction ends (PostgreSQL; SQLite: no-op).

    Taken before any tenant or subscription row, by every transaction that links,
    unlinks or mirrors something of that customer, after the shared lock on all
    customers: while a sync holds that one, this waits for the sync to end (up to
    :data:`ALL_CUSTOMERS_WAIT_S`, longer than the server's lock_timeout).
    """
    if not customer_id or conn.dialect.name != "postgresql":
        return
    customer_key = advisory_key("nat:customer:" + customer_id)
    got = _execute(
        conn, _LOCK_CUSTOMER, {"b_customer_key": customer_key, "b_all_key": ALL_CUSTOMERS_KEY}
    ).scalar_one()
    if not got:  # a sync holds it, or waits for it: wait in turn, then lock the customer
        _wait_for_all_customers(conn, _LOCK_ALL_CUSTOMERS_SHARED)
        _execute(conn, _LOCK_ONE_CUSTOMER, {"b_customer_key": customer_key})


def lock_all_customers(conn: Connection) -> None:
    """Hold every customer's lock (a sync, the CLI): waits for events in progress, and
    for another sync, up to :data:`ALL_CUSTOMERS_WAIT_S`."""
    if conn.dialect.name == "postgresql":
        _wait_for_all_customers(conn, _LOCK_ALL_CUSTOMERS)


# ----------------------------------------------------------------------------- tenants

_TENANT = select(tenants).where(tenants.c.id == bindparam("b_tenant"))
_TENANT_FOR_UPDATE = _TENANT.with_for_update()
_TENANT_FOR_KEY = (
    select(tenants.c.id, tenants.c.stripe_customer_id)
    .select_from(api_keys.join(tenants, api_keys.c.tenant_id == tenants.c.id))
    .where(api_keys.c.key_sha256 == bindparam("b_hash"), tenants.c.active.is_(True))
)
_TENANT_FOR_CUSTOMER = select(tenants.c.id).where(
    tenants.c.stripe_customer_id == bindparam("b_customer")
)
_TENANT_FOR_CUSTOMER_FOR_UPDATE = _TENANT_FOR_CUSTOMER.with_for_update()
# The tenant and the present owner of a customer, locked in the order of their ids.
_LINK_ROWS = (
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
# A new tenant: active, without customer or keys.
_ENSURE_TENANT = _by_dialect(
    lambda dialect_insert: (
        dialect_insert(tenants)
        .values(
            id=_param(tenants.c.id),
            stripe_customer_id=None,
            active=True,
            created_at=_param(tenants.c.created_at),
            updated_at=_param(tenants.c.updated_at),
        )
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(tenants.c.id)
    )
)
_SET_CUSTOMER = (
    update(tenants)
    .where(tenants.c.id == bindparam("b_tenant"))
    .values(_values([tenants.c.stripe_customer_id, tenants.c.updated_at]))
)
_ACTIVATE = (
    update(tenants)
    .where(tenants.c.id == bindparam("b_tenant"))
    .values(active=True, updated_at=_param(tenants.c.updated_at))
)
_ALL_TENANTS = select(tenants).order_by(tenants.c.id)


def get_tenant(conn: Connection, tenant_id: str, *, lock: bool = False) -> Any:
    """The tenant's row, or None; ``lock``: lock it (``FOR UPDATE``)."""
    query = _TENANT_FOR_UPDATE if lock else _TENANT
    return _execute(conn, query, {"b_tenant": tenant_id}).one_or_none()


def tenant_for_key(conn: Connection, key_sha256: str) -> Any:
    """The active tenant owning a key hash (its id and customer), or None."""
    return _execute(conn, _TENANT_FOR_KEY, {"b_hash": key_sha256}).one_or_none()


def tenant_for_customer(
    conn: Connection, customer_id: str | None, *, lock: bool = False
) -> str | None:
    """The tenant linked to ``customer_id``; ``lock``: lock its row (after the customer's)."""
    if not customer_id:
        return None
    query = _TENANT_FOR_CUSTOMER_FOR_UPDATE if lock else _TENANT_FOR_CUSTOMER
    found: str | None = _execute(conn, query, {"b_customer": customer_id}).scalar_one_or_none()
    return found


def lock_link(conn: Connection, tenant_id: str, customer_id: str) -> list[Any]:
    """Lock ``tenant_id`` and the tenant that has ``customer_id`` (in the order of their ids).

    Rows of ``(id, stripe_customer_id)``. Called with the customer's lock held: no other
    transaction can give the customer to a tenant meanwhile, so the rows found are all
    the rows a link changes.
    """
    params = {"b_tenant": tenant_id, "b_customer": customer_id}
    return list(_execute(conn, _LINK_ROWS, params).all())


def ensure_tenant(conn: Connection, tenant_id: str, now: datetime) -> bool:
    """Create the tenant (active, without keys) if it does not exist; True if created.

    ``INSERT ... ON CONFLICT DO NOTHING``: a concurrent creation of the same tenant
    waits for the first one to commit, then finds it there.
    """
    inserted = _execute(
        conn,
        _ENSURE_TENANT[conn.dialect.name],
        {"b_id": tenant_id, "b_created_at": now, "b_updated_at": now},
    )
    return inserted.first() is not None


def set_customer(conn: Connection, tenant_id: str, customer_id: str | None, now: datetime) -> None:
    """Link ``tenant_id`` to ``customer_id`` (None: unlink it).

    A customer belongs to one tenant at most (a unique column): unlink it from its owner
    first (:func:`move_customer` does).
    """
    _execute(
        conn,
        _SET_CUSTOMER,
        {"b_tenant": tenant_id, "b_stripe_customer_id": customer_id, "b_updated_at": now},
    )


def move_customer(conn: Connection, move: CustomerMove, now: datetime) -> None:
    """Give the customer to its new tenant, unlinking it from the one that had it first."""
    if move.from_tenant is not None:
        log.warning(
            "customer_relinked",
            customer_id=move.customer_id,
            from_tenant=move.from_tenant,
            to_tenant=move.to_tenant,
        )
        set_customer(conn, move.from_tenant, None, now)
    set_customer(conn, move.to_tenant, move.customer_id, now)


def activate_tenant(conn: Connection, tenant_id: str, now: datetime) -> None:
    _execute(conn, _ACTIVATE, {"b_tenant": tenant_id, "b_updated_at": now})


def list_tenants(conn: Connection) -> Sequence[Any]:
    return _execute(conn, _ALL_TENANTS).all()


# ------------------------------------------------------------------------------- keys

_DELETE_KEY = delete(api_keys).where(api_keys.c.key_sha256 == bindparam("b_hash"))
_INSERT_KEY = insert(api_keys).values(_values(api_keys.c))
_KEY_COUNT = (
    select(func.count()).select_from(api_keys).where(api_keys.c.tenant_id == bindparam("b_tenant"))
)


def add_key(conn: Connection, tenant_id: str, key_sha256: str, now: datetime) -> None:
    """Give a key (its hash) to ``tenant_id``, taking it from any other tenant."""
    _execute(conn, _DELETE_KEY, {"b_hash": key_sha256})
    _execute(
        conn,
        _INSERT_KEY,
        {"b_key_sha256": key_sha256, "b_tenant_id": tenant_id, "b_created_at": now},
    )


def key_count(conn: Connection, tenant_id: str) -> int:
    return int(_execute(conn, _KEY_COUNT, {"b_tenant": tenant_id}).scalar_one())


# ----------------------------------------------------------------- deleted customers

_RECORD_DELETED = _by_dialect(
    lambda dialect_insert: (
        dialect_insert(deleted_customers)
        .values(_values(deleted_customers.c))
        .on_conflict_do_nothing(index_elements=["customer_id"])
    )
)
_CUSTOMER_DELETED = select(deleted_customers.c.customer_id).where(
    deleted_customers.c.customer_id == bindparam("b_customer")
)
_CUSTOMER_ID_LENGTH = 255  # deleted_customers.customer_id is a String(255)


def record_customer_deleted(
    conn: Connection, customer_id: str, event_id: str, now: datetime
) -> None:
    """Remember that ``customer_id`` was deleted (Stripe never reuses a customer's id).

    Once only: a second deletion event of the customer changes nothing. An id longer
    than the column holds (no Stripe id is) cannot be any tenant's customer either:
    there is nothing to remember.
    """
    if len(customer_id) > _CUSTOMER_ID_LENGTH:
        return
    _execute(
        conn,
        _RECORD_DELETED[conn.dialect.name],
        {"b_customer_id": customer_id, "b_event_id": event_id, "b_deleted_at": now},
    )


def customer_deleted(conn: Connection, customer_id: str) -> bool:
    """Has ``customer_id`` been deleted (:func:`record_customer_deleted`)?"""
    return _execute(conn, _CUSTOMER_DELETED, {"b_customer": customer_id}).first() is not None


# ------------------------------------------------------------------------ subscriptions

_SUBSCRIPTION_COLUMNS = [subscriptions.c[field.name] for field in fields(Subscription)]
_CUSTOMER_SUBSCRIPTIONS = select(*_SUBSCRIPTION_COLUMNS).where(
    subscriptions.c.customer_id == bindparam("b_customer"),
    subscriptions.c.status.is_not(None),
)
_SUBSCRIPTION_FOR_UPDATE = (
    select(*_SUBSCRIPTION_COLUMNS).where(subscriptions.c.id == bindparam("b_id")).with_for_update()
)
# A subscription known by its id only (an invoice may come first): no status yet.
_PLACEHOLDER = _by_dialect(
    lambda dialect_insert: (
        dialect_insert(subscriptions)
        .values(
            id=_param(subscriptions.c.id),
            customer_id=_param(subscriptions.c.customer_id),
            cancel_at_period_end=False,
            updated_at=_param(subscriptions.c.updated_at),
        )
        .on_conflict_do_nothing(index_elements=["id"])
    )
)
_SAVE_SUBSCRIPTION = (
    update(subscriptions)
    .where(subscriptions.c.id == bindparam("b_id"))
    .values(_values(column for column in _SUBSCRIPTION_COLUMNS if column.key != "id"))
)


def _subscription(row: Any) -> Subscription:
    """A row of :data:`_SUBSCRIPTION_COLUMNS` (in the order of the record's fields)."""
    return Subscription(*row)


def customer_subscriptions(conn: Connection, customer_id: str | None) -> list[Subscription]:
    """The subscriptions an entitlement counts: the customer's, with a status."""
    if not customer_id:
        return []
    rows = _execute(conn, _CUSTOMER_SUBSCRIPTIONS, {"b_customer": customer_id}).all()
    return [_subscription(row) for row in rows]


def lock_subscription(
    conn: Connection, sub_id: str, customer_id: str | None, now: datetime
) -> Subscription:
    """The subscription's row, created if needed and locked for this transaction.

    Read (and on PostgreSQL lock) first: the row usually exists, and one round trip
    does. Absent, a placeholder is inserted (a concurrent insert of the same id waits
    on the primary key, then does nothing) and the row read and locked again.
    """
    params = {"b_id": sub_id}
    row = _execute(conn, _SUBSCRIPTION_FOR_UPDATE, params).one_or_none()
    if row is None:
        _execute(
            conn,
            _PLACEHOLDER[conn.dialect.name],
            {"b_id": sub_id, "b_customer_id": customer_id, "b_updated_at": now},
        )
        row = _execute(conn, _SUBSCRIPTION_FOR_UPDATE, params).one()
    return _subscription(row)


def save_subscription(conn: Connection, sub: Subscription) -> None:
    """Write every mirrored column of ``sub``'s row (locked by :func:`lock_subscription`)."""
    params = {f"b_{column.key}": getattr(sub, column.key) for column in _SUBSCRIPTION_COLUMNS}
    _execute(conn, _SAVE_SUBSCRIPTION, params)


# ------------------------------------------------------------------------------ spends

_PRIOR_SPEND = select(scan_spends.c.response, scan_spends.c.request_sha256).where(
    scan_spends.c.tenant_id == bindparam("b_tenant"),
    scan_spends.c.idempotency_key == bindparam("b_key"),
)
# ON CONFLICT: a spend with the same idempotency key is never recorded twice, even by a
# transaction that would not hold the tenant's lock; RETURNING says whether this one was.
_RECORD_SPEND = _by_dialect(
    lambda dialect_insert: (
        dialect_insert(scan_spends)
        .values(_values(column for column in scan_spends.c if column.key != "id"))
        .on_conflict_do_nothing(index_elements=["tenant_id", "idempotency_key"])
        .returning(scan_spends.c.id)
    )
)
_SPENT_SINCE = select(func.coalesce(func.sum(scan_spends.c.count), 0)).where(
    scan_spends.c.tenant_id == bindparam("b_tenant"),
    scan_spends.c.spent_at >= bindparam("b_start", type_=scan_spends.c.spent_at.type),
)
_SPENT_IN = _SPENT_SINCE.where(
    scan_spends.c.spent_at < bindparam("b_end", type_=scan_spends.c.spent_at.type)
)


def prior_spend(conn: Connection, tenant_id: str, idempotency_key: str) -> Any:
    """The spend recorded under ``idempotency_key`` (its response and request_sha256)."""
    return _execute(
        conn, _PRIOR_SPEND, {"b_tenant": tenant_id, "b_key": idempotency_key}
    ).one_or_none()


def record_spend(
    conn: Connection,
    tenant_id: str,
    count: int,
    spent_at: datetime,
    idempotency_key: str | None,
    request_sha256: str | None,
    response: str,
) -> bool:
    """Insert a spend; False if one with the same idempotency key is there already."""
    recorded = _execute(
        conn,
        _RECORD_SPEND[conn.dialect.name],
        {
            "b_tenant_id": tenant_id,
            "b_count": count,
            "b_spent_at": spent_at,
            "b_idempotency_key": idempotency_key,
            "b_request_sha256": request_sha256,
            "b_response": response,
        },
    )
    return recorded.first() is not None


def scans_used(conn: Connection, tenant_id: str, ent: Entitlement) -> int:
    """Scans spent in the window (everything since its start while it stays in force)."""
    params = {"b_tenant": tenant_id, "b_start": ent.window.start}
    if ent.window_open:
        return int(_execute(conn, _SPENT_IN, {**params, "b_end": ent.window.end}).scalar_one())
    return int(_execute(conn, _SPENT_SINCE, params).scalar_one())


# ----------------------------------------------------------------------------- history


@dataclass(frozen=True)
class TenantChange:
    """A row of ``tenant_changes``: a tenant's entitlement after a change, and its cause."""

    tenant_id: str
    source: str  # webhook (with event_id) | sync | cli
    event_id: str | None
    changed_at: datetime
    plan: str
    subscription_status: str | None
    scans_quota: int
    period_start: datetime
    quota_reset_date: datetime
    event_type: str | None
    price_id: str | None
    price_lookup_key: str | None
    quantity: int | None


_CHANGE_COLUMNS = [tenant_changes.c[field.name] for field in fields(TenantChange)]
_RECORD_CHANGE = insert(tenant_changes).values(_values(_CHANGE_COLUMNS))
_HISTORY = (
    select(tenant_changes)
    .where(tenant_changes.c.tenant_id == bindparam("b_tenant"))
    .order_by(tenant_changes.c.id)
)


def record_changes(conn: Connection, changes: Iterable[TenantChange]) -> None:
    """Write a few history rows (an event's, the CLI's), one statement each."""
    for change in changes:
        params = {f"b_{column.key}": getattr(change, column.key) for column in _CHANGE_COLUMNS}
        _execute(conn, _RECORD_CHANGE, params)


def history(conn: Connection, tenant_id: str) -> Sequence[Any]:
    """The tenant's history rows, oldest first."""
    return _execute(conn, _HISTORY, {"b_tenant": tenant_id}).all()


# ------------------------------------------------------------------------ sync (bulk)
# A sync reads and writes up to 10,000 tenants in a few statements per table: IN lists
# (or arrays) and multi-row inserts, whose SQL depends on the size of the input.

# Values per IN list: below SQLite's smallest variable limit (999 before 3.32) and far
# below PostgreSQL's 65,535 parameters per statement.
IN_CHUNK = 900
# Values per array (PostgreSQL): one statement of the largest sync does a fraction of its
# work (30,000 keys are six inserts), so that each one, from the driver's adaptation of
# its arrays to the server's answer, stays well within the request path's deadlines
# (statement_timeout, the answer deadline) on a busy machine.
ARRAY_CHUNK = 5_000


def chunks(values: Sequence[T], size: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _among(conn: Connection, column: Any, values: Iterable[str]) -> Iterator[Any]:
    """Conditions ``column IN values``: PostgreSQL takes them as array parameters
    (``= ANY``) of at most :data:`ARRAY_CHUNK` values, SQLite as ``IN`` lists of at most
    :data:`IN_CHUNK` values."""
    ordered = sorted(set(values))
    if conn.dialect.name == "postgresql":
        for part in chunks(ordered, ARRAY_CHUNK):
            yield column == any_(bindparam(None, part, type_=ARRAY(column.type), unique=True))
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

    PostgreSQL: ``INSERT ... SELECT * FROM unnest(<one array per column>)``, one
    statement per :data:`ARRAY_CHUNK` rows, with one parameter per column.
    SQLite: the driver's ``executemany`` (:func:`_execute_many`). ``on_conflict`` adds
    an ``ON CONFLICT`` clause to the dialect's insert.
    """
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        for part in chunks(rows, ARRAY_CHUNK):
            _insert_unnested(conn, table, part, on_conflict)
        return
    statement = sqlite_insert(table)
    _execute_many(conn, on_conflict(statement) if on_conflict else statement, table, rows)


def _insert_unnested(
    conn: Connection,
    table: Any,
    rows: Sequence[dict[str, Any]],
    on_conflict: Callable[[Any], Any] | None,
) -> None:
    """Insert ``rows`` in one ``INSERT ... SELECT * FROM unnest(...)`` (PostgreSQL)."""
    keys = list(rows[0])
    # A value the same in every row (the sync's time, a source) is one parameter.
    first = rows[0]
    shared = [k for k in keys[1:] if all(row[k] is first[k] for row in rows)]
    varying = [k for k in keys if k not in shared]  # the first key at least
    source = (
        func.unnest(
            *(
                bindparam(f"u_{key}", [row[key] for row in rows], type_=ARRAY(table.c[key].type))
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


def tenant_links(conn: Connection, tenant_ids: Iterable[str]) -> dict[str, str | None]:
    """Each existing tenant among ``tenant_ids`` and its customer."""
    query = select(tenants.c.id, tenants.c.stripe_customer_id)
    return {
        row.id: row.stripe_customer_id for row in _rows_in(conn, query, tenants.c.id, tenant_ids)
    }


def customer_owners(conn: Connection, customer_ids: Iterable[str]) -> dict[str, str]:
    """Each customer among ``customer_ids`` that a tenant has, and that tenant."""
    query = select(tenants.c.id, tenants.c.stripe_customer_id)
    return {
        row.stripe_customer_id: row.id
        for row in _rows_in(conn, query, tenants.c.stripe_customer_id, customer_ids)
    }


def key_owners(
    conn: Connection, tenant_ids: Iterable[str], key_hashes: Iterable[str]
) -> dict[str, str]:
    """Key hash -> tenant, for every key of ``tenant_ids`` and every key in ``key_hashes``."""
    query = select(api_keys.c.key_sha256, api_keys.c.tenant_id)
    return {
        row.key_sha256: row.tenant_id
        for row in _rows_in(conn, query, api_keys.c.tenant_id, tenant_ids)
        + _rows_in(conn, query, api_keys.c.key_sha256, key_hashes)
    }


def subscriptions_of(
    conn: Connection, customer_ids: Iterable[str | None]
) -> dict[str, list[Subscription]]:
    """Each customer's subscriptions with a status (what an entitlement counts)."""
    wanted = {c for c in customer_ids if c}
    found: dict[str, list[Subscription]] = {c: [] for c in wanted}
    query = select(*_SUBSCRIPTION_COLUMNS).where(subscriptions.c.status.is_not(None))
    for condition in _among(conn, subscriptions.c.customer_id, wanted):
        for row in conn.execute(query.where(condition)):
            found[row.customer_id].append(_subscription(row))
    return found


def unlink_tenants(conn: Connection, tenant_ids: Iterable[str], now: datetime) -> None:
    """Take their customer from each of ``tenant_ids``."""
    for condition in _among(conn, tenants.c.id, tenant_ids):
        conn.execute(
            update(tenants).where(condition).values(stripe_customer_id=None, updated_at=now)
        )


def upsert_tenants(
    conn: Connection, entries: Iterable[tuple[str, str | None, bool]], now: datetime
) -> None:
    """Create or update tenants from ``(tenant_id, customer_id, active)``.

    ``INSERT ... ON CONFLICT (id) DO UPDATE``: a tenant given no customer keeps its link.
    """

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
                "id": tenant_id,
                "stripe_customer_id": customer_id,
                "active": active,
                "created_at": now,
                "updated_at": now,
            }
            for tenant_id, customer_id, active in entries
        ],
        keep_unnamed_links,
    )


def delete_keys(conn: Connection, key_hashes: Iterable[str]) -> None:
    for condition in _among(conn, api_keys.c.key_sha256, key_hashes):
        conn.execute(delete(api_keys).where(condition))


def insert_keys(conn: Connection, keys: Iterable[tuple[str, str]], now: datetime) -> None:
    """Insert keys from ``(key hash, tenant_id)``."""
    _insert_rows(
        conn,
        api_keys,
        [{"key_sha256": h, "tenant_id": t, "created_at": now} for h, t in keys],
    )


def record_changes_in_bulk(conn: Connection, changes: Sequence[TenantChange]) -> None:
    """Write many history rows (a sync's) in one go."""
    _insert_rows(
        conn,
        tenant_changes,
        [
            {column.key: getattr(change, column.key) for column in _CHANGE_COLUMNS}
            for change in changes
        ],
    )
