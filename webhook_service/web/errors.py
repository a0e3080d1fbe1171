"""The one place that turns errors into HTTP answers: a status, a JSON body, headers.

Every error the service answers, from a view, the webhook door, ``/readyz`` or gunicorn
itself (:mod:`webhook_service.web.server_errors`), has the shape
``{"error": CODE, "message": text, ...facts, "status": n}``, built by :func:`answer`, and
is encoded by :func:`encode_json`, the service's one JSON encoder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import structlog
from flask import Flask, Response, request
from flask.json.provider import DefaultJSONProvider
from gunicorn.http.errors import NoMoreData, ParseException
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import ClientDisconnected, HTTPException

from webhook_service.deadlines import read_deadline_passed
from webhook_service.errors import (
    MalformedBody,
    RequestTimeout,
    ServiceError,
    ServiceUnavailable,
)

log = structlog.get_logger(__name__)

# The HTTP status of every error code the service answers.
STATUS: dict[str, int] = {
    "BAD_REQUEST": 400,
    "INVALID_SIGNATURE": 400,
    "INVALID_PAYLOAD": 400,
    "INVALID_REQUEST": 400,
    "UNKNOWN_PRICE": 400,
    "STRIPE_ERROR": 400,
    "INVALID_API_KEY": 401,
    "INVALID_SYNC_KEY": 401,
    "QUOTA_EXCEEDED": 402,
    "FORBIDDEN": 403,
    "NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
    "REQUEST_TIMEOUT": 408,
    "NO_BILLING_ACCOUNT": 409,
    "LENGTH_REQUIRED": 411,
    "PAYLOAD_TOO_LARGE": 413,
    "URI_TOO_LONG": 414,
    "UNSUPPORTED_MEDIA_TYPE": 415,
    "EXPECTATION_FAILED": 417,
    "IDEMPOTENCY_KEY_REUSED": 422,
    "RATE_LIMITED": 429,
    "HEADERS_TOO_LARGE": 431,
    "INTERNAL_ERROR": 500,
    "PROCESSING_FAILED": 500,
    "NOT_IMPLEMENTED": 501,
    "WEBHOOK_NOT_CONFIGURED": 503,
    "NOT_READY": 503,
    "SERVICE_UNAVAILABLE": 503,
    "SYNC_NOT_CONFIGURED": 503,
    "BILLING_NOT_CONFIGURED": 503,
    "STRIPE_UNAVAILABLE": 503,
}
# The code of an HTTP status that has no error of its own (werkzeug's and gunicorn's).
_CODE_OF_STATUS = {
    400: "BAD_REQUEST",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    408: "REQUEST_TIMEOUT",
    411: "LENGTH_REQUIRED",
    413: "PAYLOAD_TOO_LARGE",
    414: "URI_TOO_LONG",
    415: "UNSUPPORTED_MEDIA_TYPE",
    417: "EXPECTATION_FAILED",
    431: "HEADERS_TOO_LARGE",
    501: "NOT_IMPLEMENTED",
}


class HttpError(ServiceError):
    """An error answered by HTTP status alone (werkzeug's routing, gunicorn's parser)."""

    def __init__(self, status: int, message: str, *, allow: list[str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = _CODE_OF_STATUS.get(status, "HTTP_ERROR" if status < 500 else "INTERNAL_ERROR")
        self.allow = allow


def status_of(error: ServiceError) -> int:
    if isinstance(error, HttpError):
        return error.status
    return STATUS[error.code]


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


def answer(error: ServiceError) -> Answer:
    """The status, JSON body and headers that answer ``error``."""
    status = status_of(error)
    body = {"error": error.code, "message": error.message, **error.extra, "status": status}
    headers = {} if error.retry_after is None else {"Retry-After": str(error.retry_after)}
    if isinstance(error, HttpError) and error.allow:
        headers["Allow"] = ", ".join(error.allow)
    return Answer(status, body, headers)


def to_json(value: Any) -> str:
    """The service's one JSON encoder: compact, ASCII, keys in their order."""
    return json.dumps(value, separators=(",", ":"))


def encode_json(value: Any) -> bytes:
    """A response body: :func:`to_json` and one trailing newline."""
    return to_json(value).encode("ascii") + b"\n"


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON through :func:`encode_json`, and a body nested too deeply for the
    parser refused like any bad JSON.

    ``json.loads`` raises RecursionError (not ValueError) on a few thousand nested
    brackets, which ``request.get_json(silent=True)`` would let through as a 500.
    """

    sort_keys = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return to_json(obj)

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


# PostgreSQL's "undefined_table" and "invalid_schema_name": the database answers but has
# not been migrated (SQLite reports the same case as an OperationalError, also a 503).
_SCHEMA_MISSING_SQLSTATES = frozenset({"42P01", "3F000"})
# "read_only_sql_transaction" (a standby, default_transaction_read_only) and "disk_full":
# the database cannot take writes for now; nothing was recorded, so a retry is right.
_NO_WRITES_SQLSTATES = frozenset({"25006", "53100"})


def _schema_missing(exc: DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", None) in _SCHEMA_MISSING_SQLSTATES or (
        "no such table" in str(exc.orig)  # SQLite's word for the same case
    )


MIGRATE_HINT = "run `webhook-service db upgrade`"


def read_timed_out(exc: BaseException, environ: dict[str, Any] | None) -> bool:
    """``exc`` is a body read short because the request's read deadline shut its socket
    (see webhook_service.web.worker): the client was too slow (408), not malformed (400).

    A body cut short surfaces as werkzeug's ``ClientDisconnected`` (fewer bytes than the
    Content-Length) or, chunked, as gunicorn's ``NoMoreData``/``ParseException``.
    """
    return (
        environ is not None
        and isinstance(exc, (ClientDisconnected, ParseException, NoMoreData))
        and read_deadline_passed(environ)
    )


def service_error_for(exc: Exception, environ: dict[str, Any] | None = None) -> ServiceError:
    """The error answered for ``exc``, logged; ``environ``, the request's, tells a body
    cut by the read deadline (408).

    The one mapping, shared by Flask's error handlers and the webhook's WSGI door.
    """
    if isinstance(exc, ServiceError):
        return exc
    if read_timed_out(exc, environ):
        log.info("request_read_timeout", error=type(exc).__name__)
        return RequestTimeout()
    if isinstance(exc, HTTPException):
        allow = getattr(exc, "valid_methods", None)
        return HttpError(exc.code or 500, exc.description or exc.name, allow=allow)
    if isinstance(exc, DBAPIError) and _schema_missing(exc):
        log.warning("database_not_migrated", error=type(exc.orig).__name__, hint=MIGRATE_HINT)
        return ServiceUnavailable()
    if isinstance(exc, (OperationalError, PoolTimeoutError)):
        log.warning("database_unavailable", error=type(exc).__name__)
        return ServiceUnavailable()
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated or getattr(exc.orig, "sqlstate", None) in (
            _NO_WRITES_SQLSTATES
        ):
            log.warning("database_unavailable", error=type(exc.orig).__name__)
            return ServiceUnavailable()
        log.error("database_error", error=type(exc.orig).__name__, exc_info=exc)
        return ServiceError()
    if isinstance(exc, (ParseException, NoMoreData)):
        # gunicorn decodes a chunked body only while the application reads it, so a bad
        # chunk (or a body cut short) surfaces here: the client's fault, a 400.
        log.info("malformed_request_body", error=type(exc).__name__)
        return MalformedBody()
    log.error("unhandled_exception", error=type(exc).__name__, exc_info=exc)
    return ServiceError()


def error_response(error: ServiceError) -> Response:
    """``error`` answered as a Flask response."""
    found = answer(error)
    response = Response(encode_json(found.body), status=found.status, mimetype="application/json")
    response.headers.update(found.headers)
    return response


def init_app(app: Flask) -> None:
    """Map every error the application can raise to its JSON body."""
    app.json = JSONProvider(app)

    @app.errorhandler(Exception)
    def _any_error(exc: Exception) -> Response:
        return error_response(service_error_for(exc, request.environ))
