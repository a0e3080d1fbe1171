"""Every wait for PostgreSQL has a deadline; Database.dispose closes the kept connection."""

from __future__ import annotations

import time

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from tests.conftest import wait_for
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
def test_dispose_closes_the_kept_connection(database: Database) -> None:
    own = Database(database.url)
    with own.transaction() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    own.dispose()  # the connection was kept for the next transaction, out of the pool
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
