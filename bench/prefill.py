"""Bulk-load a large history: events in the log, and tenants with keys and subscriptions.

Rows look like the service's own (same columns, same value formats: SQLite rows go
through the service's SQLAlchemy tables, so datetimes are encoded by its column types;
PostgreSQL rows go in with COPY). What is not realistic, on purpose, is the payload
size: a pre-filled event keeps a compact JSON envelope (~330 bytes: id, type,
api_version, created, ``data.object`` with id/object/customer, livemode, request)
instead of Stripe's 5-8 kB rendering, so a million of them load in seconds.

Mix of the pre-filled log (over the 90 days before now): 35 % subscription updates,
20 % invoice.paid, 4 % subscription created, 2 % checkout completed (processed, 3 % of
those stale), 39 % types the service ignores (invoice.created/finalized/
payment_succeeded, payment_intent.succeeded, charge.succeeded), and 50 failed events.
"""

from __future__ import annotations

import hashlib
import random
import sqlite3
import string
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy import Dialect, Table
from sqlalchemy.engine import make_url

from webhook_service.db import Database
from webhook_service.models import api_keys, stripe_events, subscriptions, tenant_changes, tenants

_ALNUM = string.digits + string.ascii_uppercase + string.ascii_lowercase
EVENT_TYPES = (
    ("customer.subscription.updated", 35, "subscription"),
    ("invoice.paid", 20, "invoice"),
    ("customer.subscription.created", 4, "subscription"),
    ("checkout.session.completed", 2, "checkout.session"),
    ("invoice.created", 8, "invoice"),
    ("invoice.finalized", 8, "invoice"),
    ("invoice.payment_succeeded", 10, "invoice"),
    ("payment_intent.succeeded", 8, "payment_intent"),
    ("charge.succeeded", 5, "charge"),
)
HANDLED = frozenset(
    {
        "customer.subscription.updated",
        "invoice.paid",
        "customer.subscription.created",
        "checkout.session.completed",
    }
)
OBJECT_PREFIX = {
    "subscription": "sub",
    "invoice": "in",
    "checkout.session": "cs_test",
    "payment_intent": "pi",
    "charge": "ch",
}
FAILED_EVENTS = 50
CHUNK = 20_000
Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class FillTenant:
    tenant_id: str
    customer_id: str
    subscription_id: str | None


@dataclass(frozen=True)
class PrefillStats:
    events: int
    tenants: int
    subscriptions: int
    seconds: float
    payload_bytes_avg: int


# Random bytes mapped onto [0-9A-Za-z] (slightly non-uniform, which no reader can tell).
_TO_ALNUM = bytes((_ALNUM * 5)[:256], "ascii")


def _rid(rng: random.Random, prefix: str, n: int = 24) -> str:
    return f"{prefix}_{rng.randbytes(n).translate(_TO_ALNUM).decode('ascii')}"


def _tenant_rows(
    rng: random.Random, count: int, now: datetime
) -> tuple[list[FillTenant], Rows, Rows, Rows, Rows]:
    fills: list[FillTenant] = []
    tenant_rows: Rows = []
    key_rows: Rows = []
    sub_rows: Rows = []
    change_rows: Rows = []
    for i in range(count):
        tenant_id = f"tnt_fill_{i:06d}"
        customer = _rid(rng, "cus", 14)
        created = now - timedelta(days=rng.uniform(1, 365))
        has_sub = rng.random() < 0.8
        sub_id = _rid(rng, "sub") if has_sub else None
        fills.append(FillTenant(tenant_id, customer, sub_id))
        tenant_rows.append(
            {
                "id": tenant_id,
                "stripe_customer_id": customer,
                "active": rng.random() < 0.98,
                "created_at": created,
                "updated_at": created + timedelta(days=rng.uniform(0, 1)),
            }
        )
        key = f"nat_pk_fill_{rng.getrandbits(128):032x}"
        key_rows.append(
            {
                "key_sha256": hashlib.sha256(key.encode()).hexdigest(),
                "tenant_id": tenant_id,
                "created_at": created,
            }
        )
        if sub_id is None:
            continue
        start = now - timedelta(days=rng.uniform(0.5, 27.5))
        end = start + timedelta(days=30)
        status = rng.choices(("active", "canceled", "past_due"), (85, 10, 5))[0]
        event_id = _rid(rng, "evt")
        sub_rows.append(
            {
                "id": sub_id,
                "customer_id": customer,
                "metadata_tenant_id": tenant_id,
                "status": status,
                "price_id": "price_pro_monthly",
                "price_lookup_key": "pro_monthly",
                "price_interval": "month",
                "price_interval_count": 1,
                "quantity": 1,
                "cancel_at_period_end": False,
                "current_period_start": start,
                "current_period_end": end,
                "state_created": int(start.timestamp()),
                "state_rank": 1,
                "state_event_id": event_id,
                "updated_at": start,
            }
        )
        granting = status != "canceled"
        change_rows.append(
            {
                "tenant_id": tenant_id,
                "source": "webhook",
                "event_id": event_id,
                "changed_at": start,
                "plan": "pro" if granting else "free",
                "subscription_status": status,
                "scans_quota": 500 if granting else 10,
                "period_start": start if granting else start.replace(day=1),
                "quota_reset_date": end if granting else start.replace(day=1) + timedelta(days=31),
            }
        )
    return fills, tenant_rows, key_rows, sub_rows, change_rows


def _event_rows(
    rng: random.Random, count: int, fills: list[FillTenant], now: datetime
) -> Iterator[dict[str, Any]]:
    names = [t for t, _, _ in EVENT_TYPES]
    weights = [w for _, w, _ in EVENT_TYPES]
    kinds = {t: k for t, _, k in EVENT_TYPES}
    failed_at = set(rng.sample(range(count), min(FAILED_EVENTS, count)))
    span = 90 * 86_400
    base = now.timestamp() - span
    types = rng.choices(names, weights, k=count)
    versions = ("2025-03-31.basil", "2024-06-20")
    for i, event_type in enumerate(types):
        kind = kinds[event_type]
        tenant = fills[rng.randrange(len(fills))]
        object_id = (
            tenant.subscription_id
            if kind == "subscription" and tenant.subscription_id
            else _rid(rng, OBJECT_PREFIX[kind], 58 if kind == "checkout.session" else 24)
        )
        created = int(base + span * i / count)
        api_version = versions[i & 1]
        event_id = _rid(rng, "evt")
        received_ts = created + 0.2 + 2.8 * rng.random()
        received = datetime.fromtimestamp(received_ts, UTC)
        handled = event_type in HANDLED
        if i in failed_at:
            outcome, processed, attempts = "failed", None, 3
            error: str | None = f"UNKNOWN_PRICE {_rid(rng, 'price')}"
        else:
            outcome = ("stale" if rng.random() < 0.03 else "processed") if handled else "ignored"
            processed = datetime.fromtimestamp(received_ts + 0.001 + 0.007 * rng.random(), UTC)
            attempts, error = 1, None
        # What json.dumps gives for this envelope (every value here is JSON-safe as is).
        payload = (
            f'{{"id": "{event_id}", "object": "event", "api_version": "{api_version}", '
            f'"created": {created}, "data": {{"object": {{"id": "{object_id}", '
            f'"object": "{kind}", "customer": "{tenant.customer_id}"}}}}, "livemode": false, '
            f'"pending_webhooks": 0, "request": {{"id": null, "idempotency_key": null}}, '
            f'"type": "{event_type}"}}'
        )
        yield {
            "id": event_id,
            "type": event_type,
            "api_version": api_version,
            "created": created,
            "livemode": False,
            "received_at": received,
            "processed_at": processed,
            "outcome": outcome,
            "attempts": attempts,
            "last_error": error,
            "object_id": object_id,
            "tenant_id": tenant.tenant_id if handled else None,
            "payload": payload,
        }


def _chunks(rows: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


_EVENT_COLUMNS = [c.name for c in stripe_events.columns]


def _sqlite_insert(raw: sqlite3.Connection, dialect: Dialect, table: Table, rows: Rows) -> None:
    if not rows:
        return
    columns = list(rows[0])
    processors = [table.c[c].type.bind_processor(dialect) for c in columns]
    sql = (
        f"INSERT INTO {table.name} ({', '.join(columns)}) "  # noqa: S608 - our own table names
        f"VALUES ({', '.join('?' for _ in columns)})"
    )
    raw.executemany(
        sql,
        (
            [p(row[c]) if p else row[c] for c, p in zip(columns, processors, strict=True)]
            for row in rows
        ),
    )


def prefill(database_url: str, *, events: int, tenants_count: int, seed: int = 42) -> PrefillStats:
    """Load ``tenants_count`` tenants and ``events`` logged events into a migrated database."""
    started = time.perf_counter()
    rng = random.Random(seed)
    now = datetime.now(UTC)
    fills, tenant_rows, key_rows, sub_rows, change_rows = _tenant_rows(rng, tenants_count, now)
    payload_total = 0
    url = make_url(database_url)

    if url.get_backend_name() == "sqlite":
        # sqlite3's executemany with each value encoded by the column's own SQLAlchemy type
        # (so datetimes are stored exactly as the service stores them), in one transaction.
        database = Database(database_url, pool=False)
        dialect = database.engine.dialect
        database.dispose()
        raw = sqlite3.connect(url.database or "", timeout=60, isolation_level=None)
        try:
            # Loader-only settings (this connection): random primary keys need a big cache.
            raw.execute("PRAGMA cache_size = -524288")
            raw.execute("PRAGMA synchronous = OFF")
            raw.execute("BEGIN IMMEDIATE")
            for table, rows in (
                (tenants, tenant_rows),
                (api_keys, key_rows),
                (subscriptions, sub_rows),
                (tenant_changes, change_rows),
            ):
                _sqlite_insert(raw, dialect, table, rows)
            for chunk in _chunks(_event_rows(rng, events, fills, now), CHUNK):
                payload_total += sum(len(r["payload"]) for r in chunk)
                _sqlite_insert(raw, dialect, stripe_events, chunk)
            raw.execute("COMMIT")
        finally:
            raw.close()
    else:
        conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(conninfo) as pg, pg.cursor() as cur:
            for table, rows in (
                (tenants, tenant_rows),
                (api_keys, key_rows),
                (subscriptions, sub_rows),
                (tenant_changes, change_rows),
            ):
                columns = [c.name for c in table.columns if rows and c.name in rows[0]]
                with cur.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row([row[c] for c in columns])
            with cur.copy(f"COPY stripe_events ({', '.join(_EVENT_COLUMNS)}) FROM STDIN") as copy:
                for row in _event_rows(rng, events, fills, now):
                    payload_total += len(row["payload"])
                    copy.write_row([row[c] for c in _EVENT_COLUMNS])
            pg.commit()
        # What autovacuum would have done by the time a log holds a million rows.
        with psycopg.connect(conninfo, autocommit=True) as pg:
            pg.execute("VACUUM ANALYZE")
    return PrefillStats(
        events=events,
        tenants=tenants_count,
        subscriptions=len(sub_rows),
        seconds=time.perf_counter() - started,
        payload_bytes_avg=payload_total // max(events, 1),
    )
