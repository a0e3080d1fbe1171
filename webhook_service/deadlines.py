"""Deadlines on blocking socket reads that the reading thread cannot bound by itself.

A thread blocked reading a socket (psycopg waiting for the server's answer, gunicorn
reading a request that trickles in a byte a second) returns at once when the socket is
shut down from another thread: the read sees end-of-file. A :class:`Watchdog` does that
at a deadline. The owner registers the socket before the wait (:meth:`Watchdog.watch`),
may push the deadline back between waits (:meth:`Watchdog.rearm`), and forgets it when
done (:meth:`Watchdog.forget`). ``watch`` duplicates the descriptor once and the
watchdog shuts the socket down through that duplicate: it refers to the same open socket
(a shutdown through it is a shutdown of the owner's socket) and stays valid whatever the
owner does with its own descriptor. So the owner may close its socket before it forgets
it (libpq closes its socket itself on a reset, gunicorn on some errors): the number may
then be reused by another socket, which the watchdog never touches. The duplicate is
closed when the key is forgotten or its deadline fires; until then it also keeps a
socket the owner closed open (the connection ends at the ``forget``, which every owner
does in a ``finally``). A duplicate costs about a microsecond per watch (``dup`` and
``close``). Nothing here uses signals, so it works in any thread of any worker model.

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
from contextlib import suppress
from typing import Any

IDLE_WAKE_S = 1.0


def _duplicate(fd: int) -> socket.socket:
    """A socket object on a duplicate of ``fd`` (OSError if ``fd`` is not a socket)."""
    dup = os.dup(fd)
    try:
        return socket.socket(fileno=dup)
    except BaseException:
        os.close(dup)  # socket() does not close a descriptor it refused
        raise


class Watchdog:
    """Shut a registered socket down (``how``: ``socket.SHUT_*``) when its deadline passes."""

    def __init__(self, name: str, how: int) -> None:
        self.name = name
        self.how = how
        self._cond = threading.Condition(threading.Lock())
        # key -> [deadline, duplicate socket, window]: a list, so that rearm() can move
        # the deadline without the lock (one item assignment under the GIL).
        self._entries: dict[Hashable, list[Any]] = {}
        self._expired: set[Hashable] = set()
        self._wake_at = 0.0
        self._pid = 0
        self.fired = 0
        _watchdogs.add(self)

    def watch(self, key: Hashable, fd: int, window: float) -> None:
        """Shut the socket ``fd`` down ``window`` seconds from now (or from the last
        :meth:`rearm`). ``fd`` is duplicated here (OSError if it is not a socket)."""
        sock = _duplicate(fd)
        deadline = time.monotonic() + window
        with self._cond:
            if self._pid != os.getpid():
                self._start()
            previous = self._entries.get(key)
            self._entries[key] = [deadline, sock, window]
            self._expired.discard(key)
            if deadline < self._wake_at:
                self._cond.notify()
        if previous is not None:
            previous[1].close()

    def rearm(self, key: Hashable) -> None:
        """Push the deadline of a watched ``key`` back to its window from now (else no-op).

        Lock-free: the watchdog may still fire on the old deadline if it was already
        found passed, which is right, since it did pass. A window is never shortened here,
        so the watchdog's wake-up time stays early enough.
        """
        entry = self._entries.get(key)
        if entry is not None:
            entry[0] = time.monotonic() + entry[2]

    def forget(self, key: Hashable) -> bool:
        """Stop watching ``key``; True if its deadline had fired (its socket was shut).

        Atomic with the firing: once this returns False, the socket was not and will not
        be shut down by this watch.
        """
        with self._cond:
            entry = self._entries.pop(key, None)
            fired = key in self._expired
            self._expired.discard(key)
        if entry is not None:
            entry[1].close()  # the watchdog thread only uses it under the lock
        return fired

    def expired(self, key: Hashable) -> bool:
        """True if ``key`` was shut down by its deadline (until it is forgotten)."""
        with self._cond:
            return key in self._expired

    def _start(self) -> None:
        # Called with the lock held, first in each process: a forked child inherits the
        # entries of the parent's threads (never its own) but not the watchdog thread.
        self._close_all()
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
                    deadline, sock, _window = entry
                    if deadline <= now:
                        del self._entries[key]
                        self._expired.add(key)
                        self.fired += 1
                        with suppress(OSError):  # already shut, or reset by the peer
                            sock.shutdown(self.how)
                        sock.close()  # the duplicate only: the owner's stays open
                    else:
                        earliest = min(earliest, deadline)
                self._wake_at = earliest
                self._cond.wait(max(0.0, earliest - time.monotonic()))

    def _after_fork(self) -> None:
        # The parent's lock may have been held by one of its threads at the fork.
        self._cond = threading.Condition(threading.Lock())
        self._pid = 0
        # The duplicates of the parent's entries: a child holding them would keep the
        # parent's connections open after the parent closed them.
        self._close_all()

    def _close_all(self) -> None:
        entries = list(self._entries.values())
        self._entries.clear()
        self._expired.clear()
        for entry in entries:
            entry[1].close()


_watchdogs: weakref.WeakSet[Watchdog] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for watchdog in list(_watchdogs):
        watchdog._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


# Reading a request (headers and body), from the moment a gunicorn thread takes it up
# (see webhook_service.web.worker). Requests of this service are at most a few MB, sent by
# servers nearby (Stripe, the NAT app, a load balancer).
REQUEST_READ_DEADLINE_S = 5.0
# Shut for reading only: the application can still write its answer to a body cut short.
request_reads = Watchdog("request-read", socket.SHUT_RD)


def read_deadline_passed(environ: dict[str, Any]) -> bool:
    """True if the request's socket (gunicorn's ``gunicorn.socket``) was shut by its
    read deadline: a body that then reads short timed out, it was not malformed."""
    sock = environ.get("gunicorn.socket")
    return sock is not None and request_reads.expired(sock)
