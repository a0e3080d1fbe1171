"""SQLite writers of one file: serialised by ``BEGIN IMMEDIATE``, bounded by the busy timeout.

Real processes, threads and locks, no mock. Writers of several processes and threads
(several gunicorn workers, each with its threads) all get through, none loses another's
update in a read-check-write sequence, and a writer held up by a lock that is not ours
fails with "database is locked" (503) within the busy timeout, each on its own clock.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from tests import stripe_events as se
from tests.helpers import race_forked
from webhook_service.db import Database, engine

WRITERS = 2
TRANSACTIONS = 150
HOLD_S = 0.0005  # each transaction keeps the write lock this long: collisions are certain


def make_database(path: Path, *, pool: bool = True) -> Database:
    database = Database(f"sqlite:///{path}", pool=pool)
    with database.transaction(write=True) as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS t (pid INTEGER, i INTEGER)"))
        conn.execute(text("CREATE TABLE IF NOT EXISTS counter (n INTEGER)"))
        conn.execute(text("INSERT INTO counter VALUES (0)"))
    return database


def increment(database: Database, i: int, *, write: bool = True) -> None:
    """A read-check-write sequence: read the counter, then write it back plus one."""
    with database.transaction(write=write) as conn:
        n = conn.execute(text("SELECT n FROM counter")).scalar_one()
        conn.execute(text("INSERT INTO t VALUES (:pid, :i)"), {"pid": os.getpid(), "i": i})
        time.sleep(HOLD_S)
        conn.execute(text("UPDATE counter SET n = :n"), {"n": n + 1})


def _write_many(database: Database, write: bool, start: Any, errors: Any) -> None:
    """In a forked child: run TRANSACTIONS increments through the parent's ``database``."""
    start.wait(timeout=30)
    failed = 0
    for i in range(TRANSACTIONS):
        try:
            increment(database, i, write=write)
        except OperationalError:
            failed += 1
    errors.put(failed)


def race_processes(database: Database, *, write: bool) -> int:
    """Run WRITERS forked processes incrementing at once; the number that failed."""
    return race_forked(_write_many, (database, write), WRITERS)


def test_writers_of_two_processes_all_get_through(tmp_path: Path) -> None:
    """Two processes run read-check-write sequences at once: none fails, none is lost.

    ``pool=False``: each transaction opens its own connection, so none crosses the fork.
    """
    database = make_database(tmp_path / "processes.db", pool=False)
    assert race_processes(database, write=True) == 0
    with database.transaction() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == WRITERS * TRANSACTIONS
        assert conn.execute(text("SELECT n FROM counter")).scalar_one() == WRITERS * TRANSACTIONS
    # The control: the same sequences in deferred transactions collide. A writer that
    # read before it asked for the write lock cannot wait for it (its snapshot may be
    # stale by then): SQLite refuses it at once, busy timeout or not.
    assert race_processes(database, write=False) > 0
    database.dispose()


def test_threads_of_one_process_all_get_through(tmp_path: Path) -> None:
    """Threads of one process, through two Database objects on one file, write at once."""
    database = make_database(tmp_path / "threads.db", pool=False)
    other = Database(database.url)  # a second Database on the same file, pooled
    errors: list[Exception] = []

    def write(db: Database) -> None:
        for i in range(50):
            try:
                increment(db, i)
            except OperationalError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=write, args=(db,)) for db in (database, other) * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    with database.transaction() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 200
        assert conn.execute(text("SELECT n FROM counter")).scalar_one() == 200
    other.dispose()
    database.dispose()


def assert_locked_error(exc: BaseException) -> None:
    assert isinstance(exc, OperationalError)
    assert isinstance(exc.orig, sqlite3.OperationalError)
    assert str(exc.orig) == "database is locked"


@pytest.fixture
def short_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> float:
    """A 1 s busy timeout for the connections opened from now on, quick to test."""
    monkeypatch.setattr(engine, "SQLITE_BUSY_TIMEOUT_MS", 1000)
    return 1.0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_webhook_behind_a_foreign_writer_answers_503_in_time(
    post_event: Callable[..., Any], database: Database, short_busy_timeout: float
) -> None:
    """The busy timeout's error is a 503 SERVICE_UNAVAILABLE; the retry then goes through."""
    path = Path(database.url.removeprefix("sqlite:///"))
    event = se.checkout_completed_event(
        session_id=se.new_id("cs_test"),
        customer=se.new_id("cus"),
        subscription=se.new_id("sub"),
        created=1735689600,
        api_version=se.BASIL_API_VERSION,
        client_reference_id="tnt_locked",
    )
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        response = post_event(event)
        elapsed = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert response.status_code == 503, response.json
    assert response.json["error"] == "SERVICE_UNAVAILABLE"
    assert elapsed < short_busy_timeout + 1.0
    assert post_event(event).status_code == 200
