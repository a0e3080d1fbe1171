"""gunicorn's threaded worker, with a deadline on reading each request.

A sync worker serves one connection at a time and reads it with no deadline: a few
clients sending their headers a byte a second hold every worker, and gunicorn's timeout
then kills them all. The threaded worker (``gthread``) serves each connection in a pool
thread and leaves connections that send nothing to its poller, but a thread that has
started reading a request still reads it as slowly as the client sends. So each request
gets ``REQUEST_READ_DEADLINE_S`` (webhook_service.deadlines) from the moment a thread
takes it up: past it the socket is shut down for reading by a watchdog thread, the
blocked read returns end-of-file, and the client either sees its connection closed (it
was still sending headers) or gets the application's answer to a body cut short (408
``REQUEST_TIMEOUT``, on every endpoint: webhook_service.errors.read_timed_out): only the
reading side is shut.
"""

from __future__ import annotations

from typing import Any

from gunicorn.workers.gthread import ThreadWorker

from webhook_service.deadlines import REQUEST_READ_DEADLINE_S, request_reads


class DeadlineThreadWorker(ThreadWorker):  # type: ignore[misc]
    """``gthread``, plus the read deadline of each request."""

    def handle(self, conn: Any) -> Any:
        sock = conn.sock
        request_reads.watch(sock, sock.fileno(), REQUEST_READ_DEADLINE_S)
        try:
            return super().handle(conn)
        finally:
            request_reads.forget(sock)
