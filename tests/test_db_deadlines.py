"""Every wait for PostgreSQL has a deadline; Database.dispose closes its connections."""

from __future__ import annotations

import time

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from tests.helpers import wait_for
from tests.tcp_proxy import TcpProxy
from webhook_service import db
from webhook_service.db import Database

DatabaseStalled = OperationalError


def _admin(database: Database) -> psycopg.Connection[tuple[object, ...]]:
    url = make_url(database.url).set(drivername="postgresql")
    return psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)


def _backend_alive(database: Database, pid: int) -> bool:
    with _admin(database) as admin:
        row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
        return bool(row.fetchone()[0])  # type: ignore[index]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_dispose_closes_the_connections(database: Database) -> None:
    own = Database(database.url)
    with own.transaction() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    own.dispose()  # the connection went back to the pool after its transaction
    assert wait_for(lambda: not _backend_alive(database, pid), timeout=5)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_server_that_stops_answering_fails_the_transaction_at_the_deadline(
    database: Database,
) -> None:
    """Bytes held (not reset): the statement fails after PG_ANSWER_DEADLINE_S, not never;
    the connection is dropped, and once the server answers again the next one works."""
    url = make_url(database.url)
    with TcpProxy((url.host or "127.0.0.1", url.port or 5432)) as proxy:
        own = Database(url.set(port=proxy.port).render_as_string(hide_password=False))
        try:
            with own.transaction() as conn:
                assert conn.execute(text("SELECT 1")).scalar_one() == 1
            proxy.stall()
            started = time.monotonic()
            with pytest.raises(DatabaseStalled), own.transaction(write=True) as conn:
                conn.execute(text("SELECT 2"))
            elapsed = time.monotonic() - started
            assert db.PG_ANSWER_DEADLINE_S - 0.5 < elapsed < db.PG_ANSWER_DEADLINE_S + 2
            # A new connection meets the stall too: connect_timeout, not forever.
            started = time.monotonic()
            with pytest.raises(OperationalError), own.transaction() as conn:
                conn.execute(text("SELECT 3"))
            assert time.monotonic() - started < db.PG_CONNECT_TIMEOUT_S + 2
            proxy.restore()
            with own.transaction() as conn:
                assert conn.execute(text("SELECT 4")).scalar_one() == 4
        finally:
            own.dispose()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_deadline_passing_after_commit_drops_the_connection(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The COMMIT was answered, then the deadline passed before the watch ended (the
    socket is shut): the transaction stands, and the connection is not reused."""
    own = Database(database.url)
    forget = db.answers.forget
    armed: list[object] = []

    def late_forget(key: object) -> bool:
        if armed and key is armed[0]:
            armed.clear()
            # The deadline passes now, after the COMMIT returned, before the watch ends.
            db.answers.watch(key, key.fileno(), 0.0)  # type: ignore[attr-defined]
            assert wait_for(lambda: db.answers.expired(key), timeout=5)
        return forget(key)

    monkeypatch.setattr(db.answers, "forget", late_forget)
    try:
        with own.transaction() as conn:
            first_pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            armed.append(conn.connection.driver_connection)
        assert not armed  # the sabotage ran
        # Back in the pool, it would fail on its shut socket; it was dropped instead,
        # and a new connection serves.
        with own.transaction() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != first_pid
        assert wait_for(lambda: not _backend_alive(database, first_pid), timeout=5)
    finally:
        own.dispose()
