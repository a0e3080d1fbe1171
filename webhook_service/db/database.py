"""``Database``: the engine plus the transaction discipline every store uses."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, text

from webhook_service.db import engine as engine_module
from webhook_service.db.checkpoint import Checkpointer
from webhook_service.db.engine import (
    PG_ANSWER_DEADLINE_S,
    create_db_engine,
    invalidator,
    sqlite_file,
    unwatched,
    watched,
)
from webhook_service.db.writer_queue import writer_queue

# Lower a connection's busy timeout to what is left of the deadline only when the queue
# took longer than this (a per-transaction PRAGMA, and another to restore it).
_BUSY_TIMEOUT_SLACK_MS = 50


class Database:
    """The engine plus the transaction discipline every store uses.

    Transactions are explicit (:meth:`transaction`), each on a connection from
    SQLAlchemy's pool. A write transaction on SQLite begins with ``BEGIN IMMEDIATE``: it
    takes SQLite's one write lock before its first read, so two writers never deadlock
    upgrading a read lock, and read-check-write sequences (duplicate detection, quota
    spends) are serialised. Before that, the writers of a database file take turns in
    its writer queue (:mod:`webhook_service.db.writer_queue`), so ``BEGIN IMMEDIATE``
    finds the lock free instead of sleeping in SQLite's busy handler. The whole wait,
    queue and busy handler together, is bounded by
    :data:`~webhook_service.db.engine.SQLITE_BUSY_TIMEOUT_MS` from the moment the
    transaction was asked for; past it the transaction fails with "database is locked"
    (answered 503). The first write transaction of a process on a database file starts
    that process's WAL checkpoint thread (:mod:`webhook_service.db.checkpoint`). On
    PostgreSQL the same sequences lock the rows they depend on, and every wait for the
    server's answer has a deadline.

    ``request_deadlines=False``: a database for batch jobs and migrations (the CLI's),
    without the serving path's statement_timeout and answer watchdog.
    """

    def __init__(self, url: str, *, pool: bool = True, request_deadlines: bool = True) -> None:
        self.url = url
        self.request_deadlines = request_deadlines
        self.engine = create_db_engine(url, pool=pool, request_deadlines=request_deadlines)
        # Batch jobs and migrations wait for the server's answers without a deadline.
        self._watched = watched if request_deadlines else unwatched
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        database = sqlite_file(url) if self.is_sqlite else None
        self._writers = writer_queue(database) if database is not None else None
        # Started by the first write transaction (a process that only reads adds no WAL).
        self._checkpointer = Checkpointer(database, self) if database is not None else None

    @contextmanager
    def transaction(self, *, write: bool = False) -> Iterator[Connection]:
        """Run a block in one transaction; commit on success, roll back on any error.

        ``write``: the block writes. On SQLite it then first waits its turn in the file's
        writer queue, which it leaves once it has committed or rolled back, and begins
        with ``BEGIN IMMEDIATE``. On PostgreSQL every wait for the server's answer has a
        deadline (:func:`~webhook_service.db.engine.watched`), unless the database was
        made without ``request_deadlines``.
        """
        queue = self._writers if write else None
        if queue is not None and self._checkpointer is not None:
            self._checkpointer.ensure_running()
        deadline = time.monotonic() + engine_module.SQLITE_BUSY_TIMEOUT_MS / 1000
        with self.engine.connect() as conn:
            if write and self.is_sqlite:
                conn.execution_options(sqlite_write=True)
            queued = queue.acquire(deadline) if queue is not None else False
            lowered = False
            try:
                lowered = queued and _lower_busy_timeout(conn, deadline)
                with (
                    self._watched(conn.connection.driver_connection, on_expired=invalidator(conn)),
                    conn.begin(),
                ):
                    yield conn
            finally:
                if queued and queue is not None:
                    queue.release()
                if lowered:
                    _restore_busy_timeout(conn)

    def ping(self) -> None:
        with self.engine.connect() as conn:
            driver = conn.connection.driver_connection
            with self._watched(driver, PG_ANSWER_DEADLINE_S, invalidator(conn)):
                conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
        self.engine.dispose()


def _lower_busy_timeout(conn: Connection, deadline: float) -> bool:
    """Bound SQLite's busy timeout by what is left until ``deadline``; True if lowered."""
    left_ms = int((deadline - time.monotonic()) * 1000)
    if left_ms >= engine_module.SQLITE_BUSY_TIMEOUT_MS - _BUSY_TIMEOUT_SLACK_MS:
        return False
    try:
        _set_busy_timeout(conn, max(1, left_ms))
    except sqlite3.Error:
        return False  # a broken connection: BEGIN IMMEDIATE reports it, as SQLAlchemy wraps it
    return True


def _set_busy_timeout(conn: Connection, milliseconds: int) -> None:
    driver = conn.connection.driver_connection
    if driver is not None:
        driver.execute(f"PRAGMA busy_timeout = {milliseconds}")


def _restore_busy_timeout(conn: Connection) -> None:
    if conn.invalidated:
        return  # dropped: never reused with the lowered timeout
    try:
        _set_busy_timeout(conn, engine_module.SQLITE_BUSY_TIMEOUT_MS)
    except sqlite3.Error:
        conn.invalidate()
