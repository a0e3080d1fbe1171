"""The engine: SQLAlchemy's ``create_engine`` with the driver settings and hooks.

SQLite: WAL mode, ``synchronous = NORMAL``, foreign keys on, SQLite's own busy handler
bounded by :data:`SQLITE_BUSY_TIMEOUT_MS`, and for a database file the WAL checkpoints
left to a background thread (:mod:`webhook_service.db.checkpoint`). pysqlite's own
transaction handling is switched off, so that the ``begin`` hook emits ``BEGIN
IMMEDIATE`` for a write transaction (the ``sqlite_write`` execution option, set by
:meth:`webhook_service.db.Database.transaction`) and a plain ``BEGIN`` otherwise.

PostgreSQL: every wait for the server is bounded: ``connect_timeout``, the server-side
``statement_timeout``, ``lock_timeout`` and ``idle_in_transaction_session_timeout``,
TCP keepalives and ``tcp_user_timeout`` for a peer that stops acknowledging, and the
answer watchdog (:data:`answers`) for a peer that acknowledges but never answers. The
pool pings a connection at checkout only after it sat idle (:func:`_ping_idle_connections`).

``hide_parameters``: a database error's text never carries the statement's values
(payload fields, key hashes), so it can be logged.
"""

from __future__ import annotations

import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.pool import NullPool

from webhook_service.db.checkpoint import JOURNAL_SIZE_LIMIT_BYTES, SAFETY_AUTOCHECKPOINT_PAGES
from webhook_service.deadlines import Watchdog

SQLITE_BUSY_TIMEOUT_MS = 5_000
# SQLite errors after which a connection is dropped rather than reused.
_SQLITE_RECONNECT_ERRORS = ("SQLITE_READONLY", "SQLITE_IOERR", "SQLITE_CANTOPEN")
# PostgreSQL: every wait for the server is bounded (see _watch_answers). The server
# cancels a slow statement itself (a clean error, the connection stays usable) before the
# client would count a missing answer as a server that stopped answering.
PG_CONNECT_TIMEOUT_S = 3
PG_STATEMENT_TIMEOUT_MS = 3_000
PG_LOCK_TIMEOUT_MS = 2_000
PG_ANSWER_DEADLINE_S = 4.0
# Batch jobs and migrations (the CLI: `db upgrade`, `events prune`, `events reconcile`)
# run without the request deadlines above: no statement_timeout (an index build on a big
# table, a prune batch of many rows take what they take; the jobs bound themselves with
# their batch sizes and --max-seconds) and no answer watchdog (it would cut such a
# statement off at PG_ANSWER_DEADLINE_S). They keep connect_timeout, the TCP keepalives
# and tcp_user_timeout (a server gone away is still noticed in seconds) and the short
# lock_timeout: a job waiting on a table or row lock queues the requests behind it, so it
# rather fails and is run again. The migration lock alone is waited for longer
# (webhook_service.migrate.MIGRATION_LOCK_WAIT_MS).
PG_BATCH_STATEMENT_TIMEOUT_MS = 0  # none
# The checkout's ping of an idle connection: a live server answers SELECT 1 at once.
PG_PING_DEADLINE_S = 1.0
# Waiting for a free pooled connection (all of them busy).
PG_POOL_TIMEOUT_S = 3
# A pooled connection unused for longer than this is pinged before its next use.
PG_PING_AFTER_IDLE_S = 1.0
# The pool record's info key: since when its connection sat unused (time.monotonic()).
_IDLE_SINCE = "webhook_service.db.idle_since"


def create_db_engine(url: str, *, pool: bool = True, request_deadlines: bool = True) -> Engine:
    """Create an engine with bounded timeouts for ``url``.

    ``request_deadlines`` (PostgreSQL): the serving path's statement_timeout and answer
    watchdog; False for batch jobs and migrations (see PG_BATCH_STATEMENT_TIMEOUT_MS).
    ``pool=False``: a connection per transaction (``NullPool``).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = sqlite_file(url)
        if database is not None:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            parsed,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            hide_parameters=True,
            **({} if pool else {"poolclass": NullPool}),
        )
        _configure_sqlite(engine, background_checkpoints=database is not None)
        return engine
    statement_timeout = (
        PG_STATEMENT_TIMEOUT_MS if request_deadlines else PG_BATCH_STATEMENT_TIMEOUT_MS
    )
    options = (
        f"-c statement_timeout={statement_timeout} "
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
        "hide_parameters": True,
    }
    if request_deadlines:
        kwargs["connect_args"]["cursor_factory"] = _WatchedCursor
    if pool:
        kwargs.update(
            pool_size=5, max_overflow=5, pool_timeout=PG_POOL_TIMEOUT_S, pool_recycle=1800
        )
    else:
        kwargs["poolclass"] = NullPool
    engine = create_engine(parsed, **kwargs)
    if request_deadlines:
        _watch_answers(engine)
    if pool:
        _ping_idle_connections(engine)
    return engine


def sqlite_file(url: str) -> str | None:
    """The database file of a SQLite ``url``; None for in-memory and ``file:`` URI ones."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return database


def _configure_sqlite(engine: Engine, *, background_checkpoints: bool) -> None:
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
        if background_checkpoints:
            # Checkpoints run in a background thread (webhook_service.db.checkpoint); this
            # one, in the committing request, only if that thread ever stops.
            cursor.execute(f"PRAGMA wal_autocheckpoint = {SAFETY_AUTOCHECKPOINT_PAGES}")
            cursor.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT_BYTES}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # SQLAlchemy's documented recipe for pysqlite: emit BEGIN from the "begin"
        # event. Through Connection.exec_driver_sql, so its errors are translated as
        # every statement's are: "database is locked" answers 503, and _on_error below
        # runs for it.
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


# A PostgreSQL server that accepts bytes but never answers (a failover, a network
# partition) leaves psycopg waiting for good: TCP keepalives and tcp_user_timeout only
# notice a peer that stops acknowledging, and a proxy or load balancer in between still
# acknowledges. So every wait for an answer has a deadline: while a transaction runs its
# connection is watched, the deadline moves to PG_ANSWER_DEADLINE_S from each statement,
# commit or rollback sent, and when it passes the watchdog shuts the socket down. The
# blocked read returns at once, psycopg reports the connection lost, SQLAlchemy treats it
# as a disconnect (invalidates it and the pool's older connections) and the request
# answers 503. No signal is used, so this holds in any thread.
answers = Watchdog("postgresql", socket.SHUT_RDWR)


class _WatchedCursor(psycopg.Cursor[Any]):
    """psycopg's cursor, moving its connection's answer deadline at each statement."""

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        answers.rearm(self.connection)
        return super().execute(*args, **kwargs)

    def executemany(self, *args: Any, **kwargs: Any) -> None:
        answers.rearm(self.connection)
        super().executemany(*args, **kwargs)


@contextmanager
def watched(
    dbapi_connection: Any,
    seconds: float = PG_ANSWER_DEADLINE_S,
    on_expired: Callable[[], None] | None = None,
) -> Iterator[None]:
    """Watch a psycopg connection's answers for the block (a no-op for other drivers).

    The deadline may pass after the block's last answer came (a COMMIT that returned
    just in time) but before the watch ends: the socket is then shut although nothing
    failed. ``on_expired`` is called in that case (and whenever the deadline fired and
    the connection was not invalidated meanwhile), so the caller drops the connection
    instead of reusing it.
    """
    if not isinstance(dbapi_connection, psycopg.Connection):
        yield
        return
    answers.watch(dbapi_connection, dbapi_connection.fileno(), seconds)
    try:
        yield
    finally:
        # An invalidation during the block forgot the watch already (returns False).
        if answers.forget(dbapi_connection) and on_expired is not None:
            on_expired()


@contextmanager
def unwatched(
    dbapi_connection: Any,
    seconds: float = PG_ANSWER_DEADLINE_S,
    on_expired: Callable[[], None] | None = None,
) -> Iterator[None]:
    """:func:`watched`'s stand-in for a Database without request deadlines (the CLI)."""
    yield


def invalidator(conn: Connection) -> Callable[[], None]:
    """Invalidate ``conn`` (its socket was shut by the watchdog), unless it already is."""

    def invalidate() -> None:
        if not conn.invalidated:
            conn.invalidate()

    return invalidate


class DatabaseStalled(OperationalError):
    """The server did not answer within :data:`PG_ANSWER_DEADLINE_S`; its connection was
    shut down and dropped. Not worth retrying at once: a new connection would wait as long
    (``connection_invalidated`` is False, so the event log's retry leaves it alone)."""


def _watch_answers(engine: Engine) -> None:
    def _rearm(conn: Connection) -> None:
        if not conn.invalidated:  # else nothing is sent
            answers.rearm(conn.connection.driver_connection)

    event.listen(engine, "commit", _rearm)
    event.listen(engine, "rollback", _rearm)

    @event.listens_for(engine, "handle_error")
    def _on_error(context: ExceptionContext) -> BaseException | None:
        conn = context.connection
        if conn is None or conn.invalidated:
            return None
        if not answers.expired(conn.connection.driver_connection):
            return None
        context.is_disconnect = True
        return DatabaseStalled(context.statement, None, context.original_exception)

    @event.listens_for(engine, "invalidate")
    @event.listens_for(engine, "close")
    def _forget(dbapi_connection: Any, *_args: Any) -> None:
        # Before the driver connection is closed (its descriptor may then be reused).
        answers.forget(dbapi_connection)


def _ping_idle_connections(engine: Engine) -> None:
    """Check a pooled connection before use only if it sat idle for a while.

    SQLAlchemy's ``pool_pre_ping`` pings at every checkout: a round trip to the server
    per transaction, as much as a statement of the transaction itself. A connection in
    steady use is known to work (a failure invalidates it and, on a disconnect, every
    older connection of the pool); one that sat idle through a restart or a network
    cut is what a ping is for. Raising ``DisconnectionError`` from the ``checkout``
    event is SQLAlchemy's documented way to make the pool replace the connection.
    """

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.pop(_IDLE_SINCE, None)
        if idle_since is None or time.monotonic() - idle_since < PG_PING_AFTER_IDLE_S:
            return
        shut: list[bool] = []  # the deadline passed just after the ping was answered
        try:
            with watched(dbapi_connection, PG_PING_DEADLINE_S, lambda: shut.append(True)):
                with dbapi_connection.cursor() as cursor:
                    cursor.execute("SELECT 1")
                dbapi_connection.rollback()
        except Exception as exc:
            raise DisconnectionError(f"{type(exc).__name__}: idle connection lost") from exc
        if shut:
            raise DisconnectionError("idle connection shut down at its ping's deadline")
