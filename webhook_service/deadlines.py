"""Deadlines on blocking socket reads that the reading thread cannot bound by itself.

A thread blocked reading a socket (psycopg waiting for the server's answer, gunicorn
reading a request that trickles in a byte a second) returns at once when the socket is
shut down from another thread: the read sees end-of-file. A :class:`Watchdog` does that
at a deadline. The owner registers the socket before the wait (:meth:`Watchdog.watch`),
may push the deadline back between waits (:meth:`Watchdog.rearm`), and forgets it when
done (:meth:`Watchdog.forget`), always before the socket can be closed, so the watchdog
never touches a descriptor that was closed and reused. Nothing here uses signals, so it
works in any thread of any worker model.

One thread per process and watchdog, started on first use (again in a forked child). It
wakes at the earliest deadline, and at least every :data:`IDLE_WAKE_S` (so registering
a later deadline, the common case, never needs to wake it).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import weakref
from collections.abc import Hashable
from typing import Any

IDLE_WAKE_S = 1.0


def shutdown_fd(fd: int, how: int) -> None:
    """``shutdown(2)`` the socket behind ``fd`` (through a duplicate, closed after)."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        sock.shutdown(how)
    except OSError:
        pass  # already closed by the peer, or not connected
    finally:
        sock.close()  # only the duplicate: the owner's descriptor stays open


class Watchdog:
    """Shut a registered socket down (``how``: ``socket.SHUT_*``) when its deadline passes."""

    def __init__(self, name: str, how: int) -> None:
        self.name = name
        self.how = how
        self._cond = threading.Condition(threading.Lock())
        # key -> [deadline, fd, window]: a list, so that rearm() can move the deadline
        # without the lock (one item assignment under the GIL).
        self._entries: dict[Hashable, list[Any]] = {}
        self._expired: set[Hashable] = set()
        self._wake_at = 0.0
        self._pid = 0
        self.fired = 0
        _watchdogs.add(self)

    def watch(self, key: Hashable, fd: int, window: float) -> None:
        """Shut ``fd`` down ``window`` seconds from now (or from the last :meth:`rearm`)."""
        deadline = time.monotonic() + window
        with self._cond:
            if self._pid != os.getpid():
                self._start()
            self._entries[key] = [deadline, fd, window]
            self._expired.discard(key)
            if deadline < self._wake_at:
                self._cond.notify()

    def rearm(self, key: Hashable) -> None:
        """Push the deadline of a watched ``key`` back to its window from now (else no-op).

        Lock-free: the watchdog may still fire on the old deadline if it was already
        found passed, which is right, since it did pass. A window is never shortened here,
        so the watchdog's wake-up time stays early enough.
        """
        entry = self._entries.get(key)
        if entry is not None:
            entry[0] = time.monotonic() + entry[2]

    def forget(self, key: Hashable) -> None:
        """Stop watching ``key``; from now on the owner may close its socket."""
        with self._cond:
            self._entries.pop(key, None)
            self._expired.discard(key)

    def expired(self, key: Hashable) -> bool:
        """True if ``key`` was shut down by its deadline (until it is forgotten)."""
        with self._cond:
            return key in self._expired

    def _start(self) -> None:
        # Called with the lock held, first in each process: a forked child inherits the
        # entries of the parent's threads (never its own) but not the watchdog thread.
        self._entries.clear()
        self._expired.clear()
        self._pid = os.getpid()
        self._wake_at = 0.0
        threading.Thread(target=self._run, name=f"watchdog-{self.name}", daemon=True).start()

    def _run(self) -> None:
        pid = os.getpid()
        with self._cond:
            while self._pid == pid:
                now = time.monotonic()
                earliest = now + IDLE_WAKE_S
                for key, entry in list(self._entries.items()):
                    deadline, fd, _window = entry
                    if deadline <= now:
                        del self._entries[key]
                        self._expired.add(key)
                        self.fired += 1
                        shutdown_fd(fd, self.how)
                    else:
                        earliest = min(earliest, deadline)
                self._wake_at = earliest
                self._cond.wait(max(0.0, earliest - time.monotonic()))

    def _after_fork(self) -> None:
        # The parent's lock may have been held by one of its threads at the fork.
        self._cond = threading.Condition(threading.Lock())
        self._pid = 0


_watchdogs: weakref.WeakSet[Watchdog] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for watchdog in list(_watchdogs):
        watchdog._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


# Reading a request (headers and body), from the moment a gunicorn thread takes it up
# (see webhook_service.worker). Requests of this service are at most a few MB, sent by
# servers nearby (Stripe, the NAT app, a load balancer).
REQUEST_READ_DEADLINE_S = 5.0
# Shut for reading only: the application can still write its answer to a body cut short.
request_reads = Watchdog("request-read", socket.SHUT_RD)


def read_deadline_passed(environ: dict[str, Any]) -> bool:
    """True if the request's socket (gunicorn's ``gunicorn.socket``) was shut by its
    read deadline: a body that then reads short timed out, it was not malformed."""
    sock = environ.get("gunicorn.socket")
    return sock is not None and request_reads.expired(sock)
