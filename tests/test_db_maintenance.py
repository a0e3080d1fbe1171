"""Connection upkeep: SQLite WAL checkpoints off the request path, pings only after idling."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from flask import Flask
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from werkzeug.test import TestResponse

from tests import stripe_events as se
from tests.helpers import wait_for
from webhook_service.db import Database, checkpoint, engine
from webhook_service.migrate import upgrade
from webhook_service.models import stripe_events
from webhook_service.sql import Prepared, run

LOG_EVENT = Prepared(
    stripe_events.insert(),
    column_keys=(
        "id",
        "type",
        "created",
        "livemode",
        "received_at",
        "outcome",
        "attempts",
        "payload",
    ),
)


def _log_events(database: Database, count: int, prefix: str) -> None:
    now = datetime.now(UTC)
    for i in range(count):
        with database.transaction(write=True) as conn:
            run(
                conn,
                LOG_EVENT,
                {
                    "id": f"evt_{prefix}_{i}",
                    "type": "invoice.paid",
                    "created": 1,
                    "livemode": False,
                    "received_at": now,
                    "outcome": "processed",
                    "attempts": 1,
                    "payload": "x" * 7000,
                },
            )


def _checkpoint_thread_of(database: Database) -> threading.Thread | None:
    checkpointer = database._checkpointer
    assert checkpointer is not None
    return checkpointer._thread


@pytest.fixture
def sqlite_database(tmp_path: os.PathLike[str]) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path}/wal.db")
    upgrade(database)
    yield database
    database.dispose()


def test_commits_leave_checkpoints_to_the_background_thread(
    sqlite_database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages reach the database file although no request ran a checkpoint."""
    path = make_url(sqlite_database.url).database
    assert path is not None
    with sqlite_database.transaction() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == (
            checkpoint.SAFETY_AUTOCHECKPOINT_PAGES
        )
    before = os.path.getsize(path)
    _log_events(sqlite_database, 40, "bg")  # ~80 pages: far below any automatic checkpoint
    assert wait_for(lambda: os.path.getsize(path) > before + 40 * 7000, timeout=10)
    wal = sqlite3.connect(path)
    try:
        busy, frames, copied = wal.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    finally:
        wal.close()
    assert busy == 0
    assert frames == copied


def test_the_checkpoint_thread_stops_with_its_database(tmp_path: os.PathLike[str]) -> None:
    """Started by the first write transaction (not by reads), stopped by dispose()."""
    database = Database(f"sqlite:///{tmp_path}/own.db")
    with database.transaction() as conn:
        conn.execute(text("SELECT 1"))
    assert _checkpoint_thread_of(database) is None
    upgrade(database)
    _log_events(database, 1, "stop")
    thread = _checkpoint_thread_of(database)
    assert thread is not None
    assert thread.is_alive()
    database.dispose()
    thread.join(timeout=5)
    assert not thread.is_alive()


def _backend_pid(database: Database) -> int:
    with database.transaction() as conn:
        return int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


def _terminate(database: Database, pid: int) -> None:
    url = make_url(database.url).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_an_idle_connection_lost_meanwhile_is_replaced(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection killed while idle is pinged, found dead and replaced: no error."""
    monkeypatch.setattr(engine, "PG_PING_AFTER_IDLE_S", 0.2)
    pid = _backend_pid(database)
    _terminate(database, pid)
    time.sleep(0.3)
    assert _backend_pid(database) != pid


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_connection_in_steady_use_is_not_pinged(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within the idle threshold no ping runs: a connection lost meanwhile fails once."""
    monkeypatch.setattr(engine, "PG_PING_AFTER_IDLE_S", 3600.0)
    pid = _backend_pid(database)
    _terminate(database, pid)
    with pytest.raises(OperationalError):
        _backend_pid(database)
    # The failure invalidated the pool: the next transaction gets a fresh connection.
    assert _backend_pid(database) != pid


def test_two_open_transactions_never_share_a_connection(database: Database) -> None:
    with database.transaction() as outer, database.transaction() as inner:
        assert inner is not outer
        assert inner.connection.driver_connection is not outer.connection.driver_connection


def test_a_failed_transaction_gives_its_connection_back(database: Database) -> None:
    with pytest.raises(ZeroDivisionError), database.transaction() as failed:
        _ = 1 / 0
    with database.transaction() as after:
        assert after is not failed


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_delivery_survives_a_connection_lost_in_steady_use(
    app: Flask, post_event: Callable[..., TestResponse], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed between two deliveries (no ping): the event log retries on a new connection."""
    monkeypatch.setattr(engine, "PG_PING_AFTER_IDLE_S", 3600.0)
    service_db: Database = app.extensions["nat"].database
    pid = _backend_pid(service_db)  # the connection the service keeps for its next use
    _terminate(service_db, pid)

    def event() -> dict[str, Any]:
        return se.subscription_event(
            "customer.subscription.created",
            sub_id=se.new_id("sub"),
            customer=se.new_id("cus"),
            status="active",
            period_start=1_735_689_600,
            period_end=1_738_368_000,
            created=1_735_689_660,
            api_version=se.BASIL_API_VERSION,
        )

    response = post_event(event())
    assert response.status_code == 200, response.json
    assert response.json is not None
    assert response.json["outcome"] == "processed"
    assert _backend_pid(service_db) != pid
