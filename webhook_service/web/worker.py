"""gunicorn's threaded worker, with a deadline on reading each request.

A sync worker serves one connection at a time and reads it with no deadline: a few
clients sending their headers a byte a second hold every worker, and gunicorn's timeout
then kills them all. The threaded worker (``gthread``) serves each connection in a pool
thread and leaves connections that send nothing to its poller, but a thread that has
started reading a request still reads it as slowly as the client sends. So each request
gets ``REQUEST_READ_DEADLINE_S`` (webhook_service.deadlines) from the moment its first
bytes are there: past it the socket is shut down for reading by a watchdog thread, the
blocked read returns end-of-file, and the client either sees its connection closed (it
was still sending headers) or gets the application's answer to a body cut short (408
``REQUEST_TIMEOUT``, on every endpoint: webhook_service.errors.read_timed_out): only the
reading side is shut.

A new connection that sends nothing is left to gthread as it is: its pool thread waits
``DEFAULT_WORKER_DATA_TIMEOUT`` for data, then hands the connection back to the poller
(``_DEFER``), with no deadline running, so an idle but open connection is kept (until
gunicorn's keepalive timeout), not shut.

The deadline runs until the thread is done with the connection, the application's work
included (gunicorn reads the body when the application does, and drains what it left
afterwards). A connection whose read side was shut is never kept alive: its answer is
still sent, then the connection is closed rather than put back in the poller, where the
client's next request on it would meet a socket that no longer reads.
"""

from __future__ import annotations

from typing import Any

from gunicorn.workers import gthread

from webhook_service.deadlines import REQUEST_READ_DEADLINE_S, request_reads


class DeadlineThreadWorker(gthread.ThreadWorker):  # type: ignore[misc]
    """``gthread``, plus the read deadline of each request."""

    def handle(self, conn: Any) -> Any:
        # gthread's own wait for a new connection's first bytes (it would do it first
        # thing in handle()), before the deadline starts: a connection still idle after
        # it goes back to the poller unharmed.
        if (
            not conn.initialized
            and not conn.data_ready
            and not conn.wait_for_data(gthread.DEFAULT_WORKER_DATA_TIMEOUT)
        ):
            return gthread._DEFER
        sock = conn.sock
        request_reads.watch(sock, sock.fileno(), REQUEST_READ_DEADLINE_S)
        keepalive = False
        try:
            keepalive = super().handle(conn)
        finally:
            # forget() is atomic with the firing: if it says the deadline did not fire,
            # it never will on this request.
            if request_reads.forget(sock):
                # finish_request() closes the connection (gracefully) on a false result,
                # and puts it back in the poller on a true one.
                keepalive = False
        return keepalive
