"""A small threaded TCP proxy on 127.0.0.1 that a test can cut and restore.

``TcpProxy(("127.0.0.1", 5432))`` listens on a free port of 127.0.0.1 and forwards every
connection to the target. ``cut()`` closes every open connection (with a reset, so the
peer notices at once instead of waiting on a timeout) and resets every new one as soon as
it is accepted: to a client this is a database that went away. ``stall()`` holds every
byte instead, both ways, on open and new connections alike, without closing anything: to
a client this is a database that stops answering (a failover, a network partition), and
only its own deadlines get it out. ``restore()`` forwards again (held bytes included, as
a healed partition delivers them). Everything runs in daemon threads and is bounded in
time (``hold()``/``release()`` are other names of ``stall()``/``restore()``
without the cut); ``close()`` (or leaving the ``with`` block) stops it all.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from types import TracebackType

ACCEPT_POLL_S = 0.1
CONNECT_TIMEOUT_S = 3.0
BUFFER_BYTES = 65536


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP reset (SO_LINGER 0) rather than an orderly FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class TcpProxy:
    """Forward 127.0.0.1:<port> to ``target`` until cut."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.settimeout(ACCEPT_POLL_S)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._cut = threading.Event()
        self._flowing = threading.Event()
        self._flowing.set()
        self._stopped = threading.Event()
        self.accepted = 0
        self.refused = 0
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)
        self._thread.start()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def is_cut(self) -> bool:
        """True between :meth:`cut` and :meth:`restore`."""
        return self._cut.is_set()

    def cut(self) -> None:
        """Reset every open connection and every new one until :meth:`restore`."""
        self._cut.set()
        self._reset_all()

    @property
    def is_stalled(self) -> bool:
        """True between :meth:`stall` and :meth:`restore`."""
        return not self._flowing.is_set()

    def stall(self) -> None:
        """Hold every byte, both ways, until :meth:`restore` (connections stay open)."""
        self._flowing.clear()

    def restore(self) -> None:
        """Forward again: new connections, and the bytes held by a stall."""
        self._cut.clear()
        self._flowing.set()

    def hold(self) -> None:
        """:meth:`stall`: forward no byte, either way, until :meth:`release`."""
        self.stall()

    def release(self) -> None:
        """Forward again, held bytes first."""
        self._flowing.set()

    def close(self) -> None:
        """Stop listening and reset every connection."""
        self._stopped.set()
        self._flowing.set()
        self._thread.join(timeout=5)
        self._listener.close()
        self._reset_all()

    def _reset_all(self) -> None:
        """Reset every open connection."""
        with self._lock:
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            _reset(sock)

    def _accept_loop(self) -> None:
        """Accept, then forward (or reset, while cut), until closed."""
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._cut.is_set():
                self.refused += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=CONNECT_TIMEOUT_S)
            except OSError:
                self.refused += 1
                _reset(client)
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            self.accepted += 1
            with self._lock:
                self._open.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pump, args=(source, sink), name="tcp-proxy-pump", daemon=True
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        """Copy ``source`` to ``sink`` until either side ends; then end both."""
        try:
            while True:
                data = source.recv(BUFFER_BYTES)
                if not data:
                    break
                while not self._flowing.wait(ACCEPT_POLL_S):
                    if self._stopped.is_set():
                        break  # closing: drop what was held
                sink.sendall(data)
        except OSError:
            pass
        with self._lock:
            owned = source in self._open or sink in self._open
            self._open.discard(source)
            self._open.discard(sink)
        if owned:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
