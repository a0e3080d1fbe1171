"""The request id and the one canonical line (and request counter) of every request.

Framework-free, so that Flask's hooks (:mod:`webhook_service.web.app`) and the webhook's
plain-WSGI endpoint (:mod:`webhook_service.web.webhook`) write the same line. It runs
on every request, so it does little: the logger is bound once (structlog's advice for a
logger used often), the counter's children are kept, and the incoming id is read from
the WSGI environ.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

import structlog

from webhook_service import metrics

log = structlog.get_logger("webhook_service.request")

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Load balancers' probes and Prometheus scrapes: counted, never logged.
UNLOGGED_ROUTES = frozenset({"/healthz", "/metrics"})
# uuid.uuid4().hex without building a UUID: 128 random bits, version 4, RFC 4122 variant.
_UUID4_CLEAR = ~(0xF000 << 64 | 0xC000 << 48)
_UUID4_SET = 0x4000 << 64 | 0x8000 << 48


def new_request_id() -> str:
    """A new request id, formatted as ``uuid.uuid4().hex``."""
    return f"{int.from_bytes(os.urandom(16)) & _UUID4_CLEAR | _UUID4_SET:032x}"


class RequestLog:
    """Start a request (its id, bound to every line) and finish it (counter and line)."""

    def __init__(self) -> None:
        self._log = log.bind()  # not the module's lazy proxy: no lookup per line
        self._counters: dict[tuple[str, str, int], Any] = {}

    def start(self, environ: dict[str, Any]) -> tuple[str, float]:
        """The request's id (the caller's X-Request-ID if well formed) and start time."""
        structlog.contextvars.clear_contextvars()
        incoming = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = incoming if _REQUEST_ID_RE.match(incoming) else new_request_id()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        return request_id, time.perf_counter()

    def finish(
        self,
        request_id: str,
        started: float | None,
        route: str,
        method: str,
        status: int,
        remote_addr: str | None,
    ) -> None:
        duration_ms = round((time.perf_counter() - started) * 1000, 2) if started else None
        counter = self._counters.get((route, method, status))
        if counter is None:
            # Keyed by the method as sent, but only a bounded set of series is ever made
            # (and only standard methods are kept as keys: the dict stays bounded too).
            label = metrics.method_label(method)
            counter = metrics.HTTP_REQUESTS.labels(route, label, str(status))
            if label == method:
                self._counters[route, method, status] = counter
        counter.inc()
        if route not in UNLOGGED_ROUTES:
            self._log.info(
                "request",
                request_id=request_id,
                method=method,
                route=route,
                status=status,
                duration_ms=duration_ms,
                remote_addr=remote_addr,
            )
        structlog.contextvars.clear_contextvars()
