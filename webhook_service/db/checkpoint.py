"""SQLite WAL checkpoints in a background thread, off the request path.

In WAL mode a commit appends pages to the ``-wal`` file; a *checkpoint* copies them back
into the database file and syncs it to disk. By default (``wal_autocheckpoint``, 1000
pages) the commit that takes the WAL past that size runs the checkpoint itself, within
its ``COMMIT``: that request waits for the copy and the disk syncs, and so do the
writers queued behind it (:mod:`webhook_service.db.writer_queue`). That shows in the p99
of write requests; ``python -m bench.sqlite_commit`` shows the cost for one connection.

:class:`Checkpointer` runs ``PRAGMA wal_checkpoint(PASSIVE)`` every
:data:`CHECKPOINT_INTERVAL_S` on a connection of its own, in a daemon thread of each
process that writes (each gunicorn worker). A passive checkpoint holds no lock a writer
needs and waits for none: it copies the frames that no open read transaction still
needs, and what it cannot copy now it copies next time. So correctness is SQLite's
own (the checkpoint is the same operation the committing request would run, in
SQLite's least intrusive mode); the thread only moves it off the request. Connections
keep an automatic checkpoint at a much larger WAL size (:data:`SAFETY_AUTOCHECKPOINT_PAGES`)
as a safety net should the thread ever stop, and ``journal_size_limit`` shrinks the WAL
file after a burst. Connections of a database without a file (``:memory:``, ``file:``
URIs) have no thread and keep SQLite's default automatic checkpoint.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import weakref
from typing import Any

import structlog

log = structlog.get_logger(__name__)

CHECKPOINT_INTERVAL_S = 0.25
# About 40 MB of WAL (4 KiB pages): reached only if the checkpoint thread stops.
SAFETY_AUTOCHECKPOINT_PAGES = 10_000
JOURNAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024


class Checkpointer:
    """One background checkpoint thread per database file and process, started on demand."""

    def __init__(self, path: str, owner: Any) -> None:
        self.path = path
        # The thread ends once its owner (a Database) is disposed or garbage collected.
        self._owner = weakref.ref(owner)
        self._pid: int | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def ensure_running(self) -> None:
        """Start this process's thread if it is not running (cheap when it is)."""
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            # A forked child inherits no thread, only this object: start one of its own.
            self._stop = threading.Event()
            thread = threading.Thread(target=self._loop, name="sqlite-wal-checkpoint", daemon=True)
            thread.start()
            self._thread = thread
            self._pid = os.getpid()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        stop = self._stop
        connection: sqlite3.Connection | None = None
        warned = False
        try:
            while not stop.wait(CHECKPOINT_INTERVAL_S):
                if self._owner() is None:
                    return
                try:
                    if connection is None:
                        connection = sqlite3.connect(
                            self.path, timeout=0, isolation_level=None, check_same_thread=False
                        )
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    warned = False
                except sqlite3.Error as exc:
                    # The file may be locked, unwritable or gone for a while; the requests
                    # report that themselves. Reconnect next time and keep going.
                    if not warned:
                        warned = True
                        log.warning("sqlite_checkpoint_failed", error=str(exc))
                    if connection is not None:
                        connection.close()
                        connection = None
        finally:
            if connection is not None:
                connection.close()
