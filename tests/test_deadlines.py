"""The watchdog shuts down only the socket it was given (never a descriptor number that
was reused), and leaks no descriptor."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from tests.conftest import wait_for
from webhook_service.deadlines import Watchdog


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
