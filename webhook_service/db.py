"""The database engine: SQLite (WAL) by default, PostgreSQL for fleets.

Transactions are explicit. ``Database.transaction(write=True)`` takes SQLite's write
lock up front (``BEGIN IMMEDIATE``) so two workers never deadlock upgrading a read
lock, and so read-check-write sequences (duplicate detection, quota spends) are
serialised. On PostgreSQL the same sequences lock the rows they depend on.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.pool import NullPool

SQLITE_BUSY_TIMEOUT_MS = 5_000
# SQLite errors after which a connection is dropped rather than reused.
_SQLITE_RECONNECT_ERRORS = ("SQLITE_READONLY", "SQLITE_IOERR", "SQLITE_CANTOPEN")
PG_CONNECT_TIMEOUT_S = 3
PG_STATEMENT_TIMEOUT_MS = 10_000
PG_LOCK_TIMEOUT_MS = 5_000


def create_db_engine(url: str, *, pool: bool = True) -> Engine:
    """Create an engine with bounded timeouts for ``url``.

    ``hide_parameters``: a database error's text never carries the statement's values
    (payload fields, key hashes), so it can be logged.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            parsed,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            hide_parameters=True,
            **({} if pool else {"poolclass": NullPool}),
        )
        _configure_sqlite(engine)
        return engine
    options = (
        f"-c statement_timeout={PG_STATEMENT_TIMEOUT_MS} "
        f"-c lock_timeout={PG_LOCK_TIMEOUT_MS} "
        f"-c idle_in_transaction_session_timeout=60000"
    )
    kwargs: dict[str, Any] = {
        "connect_args": {
            "connect_timeout": PG_CONNECT_TIMEOUT_S,
            "options": options,
            "application_name": "nat-webhook-service",
            # A server that stops answering (not resetting) is noticed in seconds, not
            # at gunicorn's worker timeout: unacknowledged sends fail after 5 s, and idle
            # connections are probed by TCP keepalives.
            "tcp_user_timeout": 5000,
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 2,
            "keepalives_count": 3,
        },
        "pool_pre_ping": True,
        "hide_parameters": True,
    }
    if pool:
        kwargs.update(pool_size=5, max_overflow=5, pool_timeout=5, pool_recycle=1800)
    else:
        kwargs["poolclass"] = NullPool
    return create_engine(parsed, **kwargs)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's own
        # transaction handling would defer it and break BEGIN IMMEDIATE).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        if connection.get_execution_options().get("sqlite_write"):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")

    @event.listens_for(engine, "handle_error")
    def _on_error(context: ExceptionContext) -> None:
        # A connection opened while the file could not be written is silently read-only
        # for good, and one that met an I/O error may keep failing: treat these like a
        # lost server connection, so the pool drops them and the next transaction opens
        # a fresh one, which writes again once the file is writable.
        name = getattr(context.original_exception, "sqlite_errorname", "")
        if name.startswith(_SQLITE_RECONNECT_ERRORS):
            context.is_disconnect = True


class Database:
    """The engine plus the transaction discipline every store uses."""

    def __init__(self, url: str, *, pool: bool = True) -> None:
        self.url = url
        self.engine = create_db_engine(url, pool=pool)
        self.is_sqlite = self.engine.dialect.name == "sqlite"

    @contextmanager
    def transaction(self, *, write: bool = False) -> Iterator[Connection]:
        """Run a block in one transaction; commit on success, roll back on any error."""
        with self.engine.connect() as conn:
            if write and self.is_sqlite:
                conn = conn.execution_options(sqlite_write=True)
            with conn.begin():
                yield conn

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
