"""SQLite writers queue on ``<database>-writer.lock`` instead of sleeping in the busy handler.

Real processes, threads and locks, no mock: the queue must serialise our own writers
(so SQLite never sees two at once), stay bounded by the busy timeout when the lock is
held by someone outside it, and be released on every way out of a transaction.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError

from tests import stripe_events as se
from tests.helpers import race_forked
from webhook_service.db import Database, engine
from webhook_service.logging import configure_logging

WRITERS = 2
TRANSACTIONS = 150
HOLD_S = 0.0005  # each transaction keeps the write lock this long: collisions are certain


def make_database(path: Path) -> Database:
    database = Database(f"sqlite:///{path}", pool=False)
    with database.transaction(write=True) as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS t (pid INTEGER, i INTEGER)"))
    return database


def lock_file(path: Path) -> Path:
    return path.with_name(path.name + "-writer.lock")


def no_busy_wait(database: Database) -> None:
    """Make SQLite fail at once ("database is locked") whenever two writers meet."""

    @event.listens_for(database.engine, "checkout")
    def _no_wait(dbapi_connection: sqlite3.Connection, *_: Any) -> None:
        dbapi_connection.execute("PRAGMA busy_timeout = 0")


def _write_many(database: Database, queued: bool, start: Any, errors: Any) -> None:
    """In a forked child: write TRANSACTIONS times through the parent's ``database``."""
    if not queued:
        database._writers = None
    no_busy_wait(database)
    start.wait(timeout=30)
    failed = 0
    for i in range(TRANSACTIONS):
        try:
            with database.transaction(write=True) as conn:
                conn.execute(text("INSERT INTO t VALUES (:pid, :i)"), {"pid": os.getpid(), "i": i})
                time.sleep(HOLD_S)
        except OperationalError:
            failed += 1
    errors.put(failed)


def race_processes(database: Database, *, queued: bool) -> int:
    """Run WRITERS forked processes writing at once; the number of "database is locked"."""
    return race_forked(_write_many, (database, queued), WRITERS)


def test_writers_of_two_processes_take_turns(tmp_path: Path) -> None:
    """With SQLite's busy wait off, queued writers of two processes never collide.

    The parent wrote first (its lock file descriptor is open when it forks): the children
    must each open their own, or they would share one lock and not exclude each other.
    """
    path = tmp_path / "queue.db"
    database = make_database(path)
    assert lock_file(path).exists()

    assert race_processes(database, queued=True) == 0
    with database.transaction() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == WRITERS * TRANSACTIONS
    # The control: without the queue the same writers do collide.
    assert race_processes(database, queued=False) > 0


def test_threads_of_one_process_take_turns(tmp_path: Path) -> None:
    """Threads share the process's file lock: they queue on a lock of their own first."""
    database = make_database(tmp_path / "threads.db")
    other = Database(database.url)  # a second Database on the same file, same process
    no_busy_wait(database)
    no_busy_wait(other)
    errors: list[Exception] = []

    def write(db: Database) -> None:
        for i in range(50):
            try:
                with db.transaction(write=True) as conn:
                    conn.execute(text("INSERT INTO t VALUES (0, :i)"), {"i": i})
                    time.sleep(HOLD_S)
            except OperationalError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=write, args=(db,)) for db in (database, other) * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    with database.transaction() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 200


@contextmanager
def held_lock_file(path: Path) -> Iterator[None]:
    """Hold the queue's lock file from an open file description of our own."""
    fd = os.open(lock_file(path), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def assert_locked_error(exc: BaseException) -> None:
    assert isinstance(exc, OperationalError)
    assert isinstance(exc.orig, sqlite3.OperationalError)
    assert str(exc.orig) == "database is locked"


def timed_writes(database: Database, threads: int) -> list[tuple[BaseException | None, float]]:
    """Start ``threads`` write transactions at once; (error, seconds) of each."""
    results: list[tuple[BaseException | None, float]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def write() -> None:
        barrier.wait(timeout=10)
        started = time.monotonic()
        error: BaseException | None = None
        try:
            with database.transaction(write=True) as conn:
                conn.execute(text("INSERT INTO t VALUES (0, 0)"))
        except OperationalError as exc:
            error = exc
        with lock:
            results.append((error, time.monotonic() - started))

    workers = [threading.Thread(target=write) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert len(results) == threads
    return results


@pytest.fixture
def short_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> float:
    """A 1 s busy timeout (the deadline of the queue too), so the bound is quick to test."""
    monkeypatch.setattr(engine, "SQLITE_BUSY_TIMEOUT_MS", 1000)
    return 1.0


def test_a_writer_behind_a_foreign_holder_of_the_lock_file_gives_up_in_time(
    tmp_path: Path, short_busy_timeout: float
) -> None:
    """Held lock file: every writer fails with "database is locked" at the busy timeout.

    Each waits on its own clock: three writers fail together, not one after another.
    """
    path = tmp_path / "held.db"
    database = make_database(path)
    with held_lock_file(path):
        results = timed_writes(database, 3)
    for error, elapsed in results:
        assert error is not None
        assert_locked_error(error)
        assert short_busy_timeout * 0.9 <= elapsed < short_busy_timeout + 0.5
    # Released: the next writer goes straight through.
    with database.transaction(write=True) as conn:
        conn.execute(text("INSERT INTO t VALUES (0, 1)"))


def test_writers_behind_a_foreign_sqlite_writer_give_up_in_time(
    tmp_path: Path, short_busy_timeout: float
) -> None:
    """A writer outside the queue holds SQLite's lock: the queued ones still fail in time.

    The first in the queue waits in SQLite's busy handler, the others for the queue; none
    waits out the busy timeout of those before it (what a blocking queue would do).
    """
    path = tmp_path / "foreign.db"
    database = Database(f"sqlite:///{path}")  # created under the 1 s busy timeout
    with database.transaction(write=True) as conn:
        conn.execute(text("CREATE TABLE t (pid INTEGER, i INTEGER)"))
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        results = timed_writes(database, 3)
        total = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    for error, elapsed in results:
        assert error is not None
        assert_locked_error(error)
        assert elapsed < short_busy_timeout + 0.5
    assert total < short_busy_timeout + 0.6
    with database.transaction(write=True) as conn:
        conn.execute(text("INSERT INTO t VALUES (0, 1)"))
    database.dispose()


def test_busy_timeout_is_bounded_by_the_deadline_and_restored(
    tmp_path: Path, short_busy_timeout: float
) -> None:
    """A writer that queued a while gets only what is left of its deadline from SQLite."""
    database = Database(f"sqlite:///{tmp_path / 'bound.db'}")
    with database.transaction(write=True) as conn:
        conn.execute(text("CREATE TABLE t (pid INTEGER, i INTEGER)"))
    seen: list[int] = []
    waiter = threading.Thread(target=lambda: seen.append(_busy_timeout_in_write(database)))
    with database.transaction(write=True):  # hold the queue for 0.6 s
        waiter.start()
        time.sleep(0.6)
    waiter.join(timeout=10)
    assert len(seen) == 1
    assert 0 < seen[0] <= 500  # about 1000 - 600 ms
    with database.transaction() as conn:
        assert conn.execute(text("PRAGMA busy_timeout")).scalar_one() == 1000
    database.dispose()


def _busy_timeout_in_write(database: Database) -> int:
    with database.transaction(write=True) as conn:
        return int(conn.execute(text("PRAGMA busy_timeout")).scalar_one())


def assert_queue_free(path: Path) -> None:
    """Nobody holds the lock file, and a writer of this process goes straight through."""
    fd = os.open(lock_file(path), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError if held
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    started = time.monotonic()
    database = Database(f"sqlite:///{path}")
    with database.transaction(write=True) as conn:
        conn.execute(text("DELETE FROM t WHERE pid = -1"))
    assert time.monotonic() - started < 0.5


class Boom(Exception):
    pass


def _insert(conn: Any) -> None:
    conn.execute(text("INSERT INTO t VALUES (0, 0)"))


def _raise(conn: Any) -> None:
    conn.execute(text("INSERT INTO t VALUES (0, 0)"))
    raise Boom


def _fail_in_sql(conn: Any) -> None:
    conn.execute(text("INSERT INTO no_such_table VALUES (1)"))


def _invalidate(conn: Any) -> None:
    conn.execute(text("INSERT INTO t VALUES (0, 0)"))
    conn.invalidate()
    raise Boom


@pytest.mark.parametrize(
    ("body", "rows"),
    [(_insert, 1), (_raise, 0), (_fail_in_sql, 0)],
    ids=["commit", "rollback", "sql-error"],
)
def test_the_queue_is_released_after_commit_and_rollback(
    tmp_path: Path, body: Callable[[Any], None], rows: int
) -> None:
    path = tmp_path / "release.db"
    database = make_database(path)
    try:
        with database.transaction(write=True) as conn:
            body(conn)
    except (Boom, OperationalError):
        pass
    assert_queue_free(path)
    with database.transaction() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == rows


def test_the_queue_is_released_when_the_connection_is_invalidated(tmp_path: Path) -> None:
    path = tmp_path / "invalidated.db"
    database = make_database(path)
    with pytest.raises(Boom), database.transaction(write=True) as conn:
        _invalidate(conn)
    assert_queue_free(path)
    with database.transaction(write=True) as conn:  # the pool opens a fresh connection
        conn.execute(text("INSERT INTO t VALUES (0, 3)"))


@pytest.fixture
def service_logging() -> Iterator[None]:
    """The service's logging (structlog through the standard library), undone after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("json", "info")
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("service_logging")
def test_without_a_usable_lock_file_writers_go_unqueued_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The lock file cannot be opened (here a directory is in its way): write as before.

    (A directory the service may not write to gives the same: the file cannot be made.)
    """
    path = tmp_path / "nolock.db"
    lock_file(path).mkdir()
    database = Database(f"sqlite:///{path}")
    for i in range(3):
        with database.transaction(write=True) as conn:
            if i == 0:
                conn.execute(text("CREATE TABLE t (pid INTEGER, i INTEGER)"))
            conn.execute(text("INSERT INTO t VALUES (0, :i)"), {"i": i})
    lines = [r.msg for r in caplog.records if isinstance(r.msg, dict)]
    warnings = [line for line in lines if line["event"] == "sqlite_writer_queue_unavailable"]
    assert len(warnings) == 1
    assert warnings[0]["level"] == "warning"
    assert warnings[0]["lock_file"] == str(lock_file(path))
    with database.transaction() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 3
    database.dispose()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_in_memory_databases_have_no_queue(url: str) -> None:
    database = Database(url)
    assert database._writers is None
    with database.transaction(write=True) as conn:
        conn.execute(text("SELECT 1"))
    database.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_webhook_behind_a_held_queue_answers_503_in_time(
    post_event: Callable[..., Any], database: Database, short_busy_timeout: float
) -> None:
    """The queue's timeout is the error SQLite's own gives: 503 SERVICE_UNAVAILABLE."""
    path = Path(database.url.removeprefix("sqlite:///"))
    event = se.checkout_completed_event(
        session_id=se.new_id("cs_test"),
        customer=se.new_id("cus"),
        subscription=se.new_id("sub"),
        created=1735689600,
        api_version=se.BASIL_API_VERSION,
        client_reference_id="tnt_queued",
    )
    with held_lock_file(path):
        started = time.monotonic()
        response = post_event(event)
        elapsed = time.monotonic() - started
    assert response.status_code == 503, response.json
    assert response.json["error"] == "SERVICE_UNAVAILABLE"
    assert elapsed < short_busy_timeout + 1.0
    assert post_event(event).status_code == 200


def test_a_writer_in_the_main_thread_waits_until_released_or_the_deadline(
    tmp_path: Path, short_busy_timeout: float
) -> None:
    """The main thread (the CLI's, a sync worker's) polls like any other: no signal used.

    Held past the deadline, the wait fails in time and leaves SIGALRM as it was; released
    meanwhile, the waiter goes at once (within a polling interval).
    """
    import signal

    assert threading.current_thread() is threading.main_thread()
    path = tmp_path / "alarm.db"
    database = make_database(path)
    with held_lock_file(path):
        started = time.monotonic()
        with pytest.raises(OperationalError) as raised, database.transaction(write=True) as conn:
            conn.execute(text("INSERT INTO t VALUES (0, 2)"))
        elapsed = time.monotonic() - started
    assert_locked_error(raised.value)
    assert short_busy_timeout * 0.9 <= elapsed < short_busy_timeout + 0.5
    assert signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None)
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)

    fd = os.open(lock_file(path), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    release_at = time.monotonic() + 0.2
    releaser = threading.Timer(0.2, lambda: fcntl.flock(fd, fcntl.LOCK_UN))
    releaser.start()
    try:
        with database.transaction(write=True) as conn:
            woken = time.monotonic()
            conn.execute(text("INSERT INTO t VALUES (0, 3)"))
    finally:
        releaser.join()
        os.close(fd)
    assert release_at - 0.01 <= woken < release_at + 0.1
