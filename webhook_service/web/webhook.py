"""The one door of the webhook: ``POST /api/v1/billing/webhook`` (with or without a
trailing slash) as a plain WSGI endpoint, in front of the Flask app.

Stripe's bursts all land here, and the request machinery of a web framework (request
and app contexts, routing, response objects, hooks) costs more of a delivery's CPU than
verifying and parsing it. This endpoint does only what the route needs: read the body
within ``MAX_WEBHOOK_BYTES``, hand it to
:func:`~webhook_service.webhooks.receiver.receive_delivery`, answer JSON. What every
request shares stays shared: errors go through the one mapping
(:mod:`webhook_service.web.errors`), the request id and the canonical line through
:class:`webhook_service.web.requestlog.RequestLog`. Other methods on this path go on to
Flask, which answers them 405.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from webhook_service.config import Settings
from webhook_service.deadlines import read_deadline_passed
from webhook_service.errors import MalformedBody, PayloadTooLarge, RequestTimeout
from webhook_service.web.errors import answer, encode_json, service_error_for
from webhook_service.web.requestlog import RequestLog
from webhook_service.webhooks.eventlog import EventLog
from webhook_service.webhooks.receiver import check_configured, receive_delivery

WEBHOOK_PATH = "/api/v1/billing/webhook"
# Both spellings are one endpoint: Stripe counts a redirect as a failed delivery.
WEBHOOK_PATHS = frozenset({WEBHOOK_PATH, WEBHOOK_PATH + "/"})
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_STATUS_LINES = {status.value: f"{status.value} {status.phrase}" for status in HTTPStatus}


# A body refused as too large is still read (and dropped) up to this much, so that the
# client, still sending, gets the 413 rather than a connection reset.
DRAIN_BYTES = 1024 * 1024


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The body is larger than MAX_WEBHOOK_BYTES ({limit} bytes).")


def _drain(stream: Any, budget: int) -> None:
    while budget > 0:
        chunk = stream.read(min(budget, 65536))
        if not chunk:
            return
        budget -= len(chunk)


def read_body(environ: dict[str, Any], limit: int) -> bytes:
    """:func:`_read_body`, a connection lost mid-body answered as werkzeug does (a 400),
    and a body still arriving at the request's read deadline with a 408."""
    try:
        return _read_body(environ, limit)
    except (OSError, ValueError, MalformedBody) as exc:
        if read_deadline_passed(environ):
            raise RequestTimeout() from None
        if isinstance(exc, MalformedBody):
            raise
        raise MalformedBody("The client went away before sending the whole body.") from None


def _read_body(environ: dict[str, Any], limit: int) -> bytes:
    """The request body, refused (413) past ``limit`` bytes.

    With Content-Length, a longer body is refused before any of it is kept. Without it
    (chunked: gunicorn marks the decoded stream ``wsgi.input_terminated``), reading stops
    at ``limit + 1`` bytes. A body shorter than its Content-Length (the client went away)
    is malformed, as werkzeug also treats it.
    """
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        try:
            size = int(length)
        except ValueError:
            raise MalformedBody("The Content-Length header is not a number.") from None
        if size > limit:
            if size <= limit + DRAIN_BYTES:
                _drain(stream, size)
            raise too_large(limit)
        body: bytes = stream.read(size) if size > 0 else b""
        if len(body) < size:
            raise MalformedBody("The request body is shorter than its Content-Length.")
        return body
    if environ.get("wsgi.input_terminated"):
        body = stream.read(limit + 1)
        if len(body) > limit:
            _drain(stream, DRAIN_BYTES)
            raise too_large(limit)
        return body
    return b""


class WebhookEndpoint:
    """Serve ``POST /api/v1/billing/webhook``; pass every other request to ``app``."""

    def __init__(
        self, app: WSGIApp, settings: Settings, event_log: EventLog, request_log: RequestLog
    ) -> None:
        self.app = app
        self.settings = settings
        self.event_log = event_log
        self.request_log = request_log

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO") not in WEBHOOK_PATHS or environ.get("REQUEST_METHOD") != "POST":
            return self.app(environ, start_response)
        request_id, started = self.request_log.start(environ)
        extra: dict[str, str] = {}
        try:
            check_configured(self.settings)
            body = read_body(environ, self.settings.max_webhook_bytes)
            reply = receive_delivery(
                self.settings, self.event_log, body, environ.get("HTTP_STRIPE_SIGNATURE")
            )
            status = 200
        except Exception as exc:
            found = answer(service_error_for(exc, environ))
            status, reply, extra = found.status, found.body, found.headers
        data = encode_json(reply)
        self.request_log.finish(
            request_id, started, WEBHOOK_PATH, "POST", status, environ.get("REMOTE_ADDR")
        )
        start_response(
            _STATUS_LINES[status],
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(data))),
                ("X-Request-ID", request_id),
                *extra.items(),
            ],
        )
        return [data]
