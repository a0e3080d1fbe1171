"""The watchdog shuts down only the socket it was given (never a descriptor number that
was reused), and the threaded worker never keeps alive a connection whose read deadline
fired, nor starts that deadline before a new connection has sent anything."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from gunicorn.config import Config
from gunicorn.workers import gthread

import webhook_service.web.worker
from tests.helpers import wait_for
from webhook_service.deadlines import Watchdog, request_reads
from webhook_service.web.worker import DeadlineThreadWorker


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def watchdog() -> Iterator[Watchdog]:
    watchdog = Watchdog("test", socket.SHUT_RDWR)
    yield watchdog
    watchdog._close_all()


def test_a_reused_descriptor_number_is_never_shut_down(watchdog: Watchdog) -> None:
    """The owner closes its socket before it forgets the watch (libpq on a reset,
    gunicorn on some errors) and another socket gets the same number: the deadline shuts
    the watched socket down, and the new one keeps working."""
    watched, watched_peer = socket.socketpair()
    number = watched.fileno()
    watchdog.watch("key", number, 0.2)
    watched.close()
    opened: list[tuple[socket.socket, socket.socket]] = []
    try:
        while not any(number in (a.fileno(), b.fileno()) for a, b in opened):
            assert len(opened) < 100, "the descriptor number was not reused"
            opened.append(socket.socketpair())
        reuser, peer = opened[-1]
        if peer.fileno() == number:
            reuser, peer = peer, reuser
        assert wait_for(lambda: watchdog.expired("key"), timeout=5)
        # The watched socket was shut down: its peer reads end-of-file.
        watched_peer.settimeout(5)
        assert watched_peer.recv(1) == b""
        # The socket now behind the same number still works both ways.
        reuser.settimeout(5)
        peer.settimeout(5)
        reuser.sendall(b"x")
        assert peer.recv(1) == b"x"
        peer.sendall(b"y")
        assert reuser.recv(1) == b"y"
        assert watchdog.forget("key")
    finally:
        for pair in opened:
            for sock in pair:
                sock.close()
        watched_peer.close()


def test_the_duplicate_is_closed_when_forgotten_or_fired(watchdog: Watchdog) -> None:
    left, right = socket.socketpair()
    try:
        watchdog.watch("warm-up", left.fileno(), 60)  # starts the watchdog's thread
        watchdog.forget("warm-up")
        before = _open_fds()
        watchdog.watch("forgotten", left.fileno(), 60)
        assert _open_fds() == before + 1
        watchdog.watch("forgotten", left.fileno(), 60)  # watched again: the old one closed
        assert _open_fds() == before + 1
        assert not watchdog.forget("forgotten")
        assert _open_fds() == before
        watchdog.watch("fired", left.fileno(), 0.05)
        assert wait_for(lambda: watchdog.expired("fired"), timeout=5)
        assert _open_fds() == before  # closed by the watchdog after the shutdown
        assert watchdog.forget("fired")
        assert not watchdog.forget("fired")
        # The owner's descriptor is still open (only shut down).
        assert left.fileno() != -1
        right.settimeout(5)
        assert right.recv(1) == b""
    finally:
        left.close()
        right.close()


def test_watching_what_is_not_a_socket_leaks_nothing(watchdog: Watchdog) -> None:
    read_end, write_end = os.pipe()
    try:
        before = _open_fds()
        with pytest.raises(OSError, match="non-socket"):
            watchdog.watch("pipe", read_end, 1)
        assert _open_fds() == before
    finally:
        os.close(read_end)
        os.close(write_end)


# --------------------------------------------------------------------------- the worker


def _worker() -> Any:
    worker = object.__new__(DeadlineThreadWorker)
    worker.cfg = Config()
    worker.log = logging.getLogger("test-deadline-worker")
    worker.alive = True
    return worker


@pytest.fixture(autouse=True)
def short_read_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webhook_service.web.worker, "REQUEST_READ_DEADLINE_S", 0.2)


def _kept_alive_conn(sock: socket.socket) -> Any:
    return SimpleNamespace(sock=sock, initialized=True, data_ready=True)


def test_a_connection_whose_read_side_was_shut_is_not_kept_alive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request processed past the read deadline: gthread's handle() says keep-alive,
    but the socket no longer reads, so the worker has the connection closed."""

    def slow_request(_self: Any, conn: Any) -> bool:
        assert wait_for(lambda: request_reads.expired(conn.sock), timeout=5)
        return True  # gthread: "the response announced keep-alive"

    monkeypatch.setattr(gthread.ThreadWorker, "handle", slow_request)
    server, client = socket.socketpair()
    try:
        assert _worker().handle(_kept_alive_conn(server)) is False
        assert not request_reads.expired(server)  # forgotten
    finally:
        server.close()
        client.close()


def test_a_connection_answered_within_the_deadline_is_kept_alive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gthread.ThreadWorker, "handle", lambda _self, _conn: True)
    server, client = socket.socketpair()
    try:
        fired = request_reads.fired
        assert _worker().handle(_kept_alive_conn(server)) is True
        time.sleep(0.4)  # past the deadline: the watch was forgotten, nothing fires
        assert request_reads.fired == fired
        client.sendall(b"x")
        server.settimeout(5)
        assert server.recv(1) == b"x"  # still reads
    finally:
        server.close()
        client.close()


def test_an_idle_new_connection_goes_back_to_the_poller_unharmed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """gthread waits DEFAULT_WORKER_DATA_TIMEOUT for a new connection's first bytes,
    then defers it to its poller: the read deadline (shorter here) must not run during
    that wait, or it shuts the connection that then reads as closed."""
    monkeypatch.setattr(gthread, "DEFAULT_WORKER_DATA_TIMEOUT", 0.6)
    server, client = socket.socketpair()
    try:
        conn = gthread.TConn(Config(), server, ("127.0.0.1", 1), ("127.0.0.1", 2))
        fired = request_reads.fired
        assert _worker().handle(conn) is gthread._DEFER
        assert request_reads.fired == fired
        client.sendall(b"GET / HTTP/1.1\r\n")
        server.settimeout(5)
        assert server.recv(64) == b"GET / HTTP/1.1\r\n"  # still reads
    finally:
        server.close()
        client.close()
