"""The SQLite writer queue: our writers of one database file take turns before SQLite's lock.

Without it, a writer that finds SQLite's write lock taken sleeps in SQLite's busy
handler (1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100 ms, then 100 ms at a time) and
retries; the lock is held for one short transaction at a time, so a waiter mostly
sleeps past the moment it was released, and one that keeps losing waits for seconds:
under concurrent writes the p99 of write requests is made of those sleeps. With it, a
writer first takes its turn (:meth:`WriterQueue.acquire`), then runs ``BEGIN
IMMEDIATE``, which then finds the lock free unless a writer outside the queue holds it.
The polling costs some CPU per write; the queue is kept for the lower tail latency.

Processes queue on an exclusive ``flock`` of ``<database>-writer.lock``; threads of one
process first on a :class:`threading.Lock` (an ``flock`` belongs to an open file
description, which the threads of a process share). The file lock is polled
(``LOCK_NB``) every :data:`WRITER_POLL_FIRST_S` to :data:`WRITER_POLL_MAX_S` until the
writer's deadline, so no writer waits longer than the busy timeout, even when SQLite's
lock is held by a process outside the queue: each waiter gives up on its own clock
instead of waiting out, in turn, the busy timeouts of those queued before it. At the
deadline it raises the error SQLite's own busy timeout raises, "database is locked"
(answered 503).

Correctness does not rest on the queue: SQLite's lock and ``BEGIN IMMEDIATE`` still
serialise writers, so a writer that goes unqueued (the lock file cannot be opened, say
in a read-only directory: one warning, and the file is tried again a minute later) or
that is not ours is merely slower. A writer leaves the queue once its ``COMMIT`` has
returned, so a commit that runs a WAL checkpoint itself holds the queue while it does
(one reason checkpoints run in a thread: :mod:`webhook_service.db.checkpoint`). Neither
lock is fair: a thread that releases and asks again at once may be served before one
that was already waiting, so under CPU starvation one writer can wait longer than the
others, up to its deadline, and then fails as above.

One queue per database file and process (:func:`writer_queue`), shared by the
process's :class:`~webhook_service.db.Database` objects; a forked child opens the lock
file again (a descriptor inherited across ``fork`` shares the parent's lock).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
import weakref
from contextlib import suppress

import structlog
from sqlalchemy.exc import OperationalError

log = structlog.get_logger(__name__)

# Polling the file lock starts this fast and slows down to the cap.
WRITER_POLL_FIRST_S = 30e-6
WRITER_POLL_GROWTH = 1.5
WRITER_POLL_MAX_S = 250e-6
# After the lock file could not be opened, writers go unqueued this long before retrying.
WRITER_QUEUE_RETRY_S = 60.0


def database_locked() -> OperationalError:
    """The error SQLite's own busy timeout raises, as SQLAlchemy wraps it (answered 503)."""
    orig = sqlite3.OperationalError("database is locked")
    orig.sqlite_errorcode = sqlite3.SQLITE_BUSY
    orig.sqlite_errorname = "SQLITE_BUSY"
    return OperationalError("BEGIN IMMEDIATE", None, orig)


class WriterQueue:
    """The turn-taking of this process's writers of one SQLite database file."""

    def __init__(self, lock_path: str) -> None:
        self.lock_path = lock_path
        self._threads = threading.Lock()
        self._fd: int | None = None
        self._pid = os.getpid()
        self._retry_at = 0.0
        self._warned = False

    def forget_parent(self) -> None:
        """In a forked child: drop the parent's descriptor (never unlock it: that would
        release the parent's lock) and thread lock (possibly held by a parent thread)."""
        if self._pid == os.getpid():
            return
        fd, self._fd = self._fd, None
        self._threads = threading.Lock()
        self._pid = os.getpid()
        if fd is not None:
            with suppress(OSError):
                os.close(fd)

    def _open(self) -> int | None:
        if time.monotonic() < self._retry_at:
            return None
        try:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            except PermissionError:
                # Locking needs no write access: use a lock file another user made.
                fd = os.open(self.lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            self._retry_at = time.monotonic() + WRITER_QUEUE_RETRY_S
            if not self._warned:
                self._warned = True
                log.warning(
                    "sqlite_writer_queue_unavailable",
                    lock_file=self.lock_path,
                    error=f"{type(exc).__name__}: {exc.strerror or exc}",
                )
            return None
        self._fd = fd
        return fd

    def acquire(self, deadline: float) -> bool:
        """Wait for this writer's turn until ``deadline`` (``time.monotonic()``).

        True: the queue is held, :meth:`release` it. False: no queue (the lock file cannot
        be opened), write unqueued. At the deadline: raise :func:`database_locked`.
        """
        if self._pid != os.getpid():
            self.forget_parent()
        threads = self._threads
        if not threads.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise database_locked()
        try:
            fd = self._fd if self._fd is not None else self._open()
            if fd is None:
                threads.release()
                return False
            delay = WRITER_POLL_FIRST_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    pass
                left = deadline - time.monotonic()
                if left <= 0:
                    raise database_locked()
                time.sleep(min(delay, left))
                delay = min(delay * WRITER_POLL_GROWTH, WRITER_POLL_MAX_S)
        except BaseException:
            threads.release()
            raise

    def release(self) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def __del__(self) -> None:
        with suppress(Exception):  # never from a garbage collection, nor at exit
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)


# One queue per database file in a process, shared by its Database objects; dropped
# (its descriptor closed) with the last of them.
_queues: weakref.WeakValueDictionary[str, WriterQueue] = weakref.WeakValueDictionary()
_queues_lock = threading.Lock()


def writer_queue(database: str) -> WriterQueue:
    """The writer queue of the SQLite database file ``database`` in this process."""
    lock_path = os.path.realpath(database) + "-writer.lock"
    with _queues_lock:
        queue = _queues.get(lock_path)
        if queue is None:
            queue = _queues[lock_path] = WriterQueue(lock_path)
        return queue


def _after_fork_in_child() -> None:
    global _queues_lock  # a parent thread may have held it
    _queues_lock = threading.Lock()
    for queue in list(_queues.values()):
        queue.forget_parent()


os.register_at_fork(after_in_child=_after_fork_in_child)
