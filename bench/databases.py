"""The databases of a run: the PostgreSQL database it creates and drops, the SQLite files,
queries for the checks, and the floor's tables (created, and filled for the big state).
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from bench.common import BenchError

# How the floor (bench/floor_app.py) names its PostgreSQL connections.
FLOOR_APPLICATION_NAME = "nat-bench-floor"


def admin_conninfo(url: str) -> str:
    parsed = make_url(url)
    return parsed.set(drivername="postgresql", database="postgres").render_as_string(
        hide_password=False
    )


def _pg_name(url: str) -> str:
    name = make_url(url).database or "nat_bench"
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise BenchError(f"refusing an unusual database name {name!r}")
    return name


def create_pg_database(url: str) -> None:
    name = _pg_name(url)
    with psycopg.connect(admin_conninfo(url), autocommit=True, connect_timeout=3) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_pg_database(url: str) -> None:
    name = _pg_name(url)
    with psycopg.connect(admin_conninfo(url), autocommit=True, connect_timeout=3) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_backend_pids(url: str, application_name: str | None = None) -> list[int]:
    """The backends serving database ``url`` (only those named ``application_name``, if given)."""
    name = _pg_name(url)
    with psycopg.connect(admin_conninfo(url), autocommit=True, connect_timeout=3) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
            "AND (%s::text IS NULL OR application_name = %s)",
            (name, application_name, application_name),
        ).fetchall()
    return [int(r[0]) for r in rows]


def db_scalar(database_url: str, sql: str) -> Any:
    parsed = make_url(database_url)
    if parsed.get_backend_name() == "sqlite":
        with contextlib.closing(sqlite3.connect(parsed.database or "", timeout=30)) as conn:
            return conn.execute(sql).fetchone()[0]
    conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, connect_timeout=3) as pg:
        row = pg.execute(sql).fetchone()
        return row[0] if row else None


def db_rows(database_url: str, sql: str) -> list[tuple[Any, ...]]:
    parsed = make_url(database_url)
    if parsed.get_backend_name() == "sqlite":
        with contextlib.closing(sqlite3.connect(parsed.database or "", timeout=30)) as conn:
            return list(conn.execute(sql).fetchall())
    conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, connect_timeout=3) as pg:
        return list(pg.execute(sql).fetchall())


def backend_pids(url: str, *, floor: bool) -> list[int]:
    """The PostgreSQL backends of the floor (``floor``) or of everything else (the service)."""
    pids = pg_backend_pids(url, FLOOR_APPLICATION_NAME if floor else None)
    if floor:
        return pids
    return sorted(set(pids) - set(pg_backend_pids(url, FLOOR_APPLICATION_NAME)))


def service_url(backend: str, folder: Path, postgres_url: str) -> str:
    """The service's database: a SQLite file under ``folder``, or a fresh PostgreSQL one."""
    if backend == "sqlite":
        folder.mkdir(exist_ok=True)
        return f"sqlite:///{folder / 'nat_bench.db'}"
    create_pg_database(postgres_url)
    return str(
        make_url(postgres_url)
        .set(drivername="postgresql+psycopg")
        .render_as_string(hide_password=False)
    )


def floor_url(service_database_url: str) -> str:
    """The floor's database: its own SQLite file beside the service's; on PostgreSQL its
    own tables in the service's database (its backends are told apart by their name)."""
    parsed = make_url(service_database_url)
    if parsed.get_backend_name() != "sqlite":
        return service_database_url
    return f"sqlite:///{Path(parsed.database or '').with_name('floor.db')}"


def fill_floor(floor_database_url: str, service_database_url: str) -> float:
    """Copy the service's event log and subscriptions into the floor's tables, so that in
    the big state both receivers write into tables of the same size; returns seconds."""
    started = time.perf_counter()
    events = (
        "INSERT INTO {p}floor_events (id, type, created, payload) "
        "SELECT id, type, created, payload FROM {s}stripe_events WHERE true "
        "ON CONFLICT (id) DO NOTHING"
    )
    subscriptions = (
        "INSERT INTO {p}floor_subscriptions (id, customer_id, status, price_id, quantity, "
        "event_created) SELECT id, customer_id, status, price_id, quantity, "
        "COALESCE(state_created, 0) FROM {s}subscriptions WHERE true "
        "ON CONFLICT (id) DO NOTHING"
    )
    floor = make_url(floor_database_url)
    if floor.get_backend_name() == "sqlite":
        service = make_url(service_database_url).database or ""
        with contextlib.closing(sqlite3.connect(floor.database or "", timeout=30)) as conn:
            conn.execute("ATTACH DATABASE ? AS service", (service,))
            with conn:
                for sql in (events, subscriptions):
                    conn.execute(sql.format(p="main.", s="service."))
        return time.perf_counter() - started
    conninfo = floor.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=3) as pg:
        for sql in (events, subscriptions):
            pg.execute(sql.format(p="", s=""))
        pg.execute("VACUUM ANALYZE floor_events, floor_subscriptions")
    return time.perf_counter() - started
