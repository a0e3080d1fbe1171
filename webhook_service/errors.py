"""The exception tree and the one place that turns errors into JSON bodies.

Domain code raises these; it never builds HTTP responses itself. Every error the
application answers has the shape ``{"error": CODE, "message": text, "status": n, ...}``.
"""

from __future__ import annotations

from typing import Any

import structlog
from flask import Flask, Response, jsonify, request
from gunicorn.http.errors import NoMoreData, ParseException
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import ClientDisconnected, HTTPException

from webhook_service.deadlines import read_deadline_passed

log = structlog.get_logger(__name__)


class ServiceError(Exception):
    """An error with a stable code, an HTTP status and a message safe to show the caller."""

    status: int = 500
    code: str = "INTERNAL_ERROR"
    default_message: str = "An internal error occurred."

    def __init__(self, message: str | None = None, **extra: Any) -> None:
        self.message = message or self.default_message
        self.extra = extra
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.extra, "status": self.status}

    def headers(self) -> dict[str, str]:
        return {}


class InvalidSignature(ServiceError):
    status, code = 400, "INVALID_SIGNATURE"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class InvalidPayload(ServiceError):
    status, code = 400, "INVALID_PAYLOAD"


class InvalidRequest(ServiceError):
    status, code = 400, "INVALID_REQUEST"


class PayloadTooLarge(ServiceError):
    status, code = 413, "PAYLOAD_TOO_LARGE"
    default_message = "The request body is larger than this endpoint accepts."


class WebhookNotConfigured(ServiceError):
    status, code = 503, "WEBHOOK_NOT_CONFIGURED"
    default_message = (
        "STRIPE_WEBHOOK_SECRET is not configured; events cannot be verified, so none is accepted."
    )


class RequestTimeout(ServiceError):
    status, code = 408, "REQUEST_TIMEOUT"
    default_message = "The request was not received in full in time."


class NotReady(ServiceError):
    """``/readyz``: what is wrong, check by check (``checks``), for a load balancer."""

    status, code = 503, "NOT_READY"


class ServiceUnavailable(ServiceError):
    status, code = 503, "SERVICE_UNAVAILABLE"
    default_message = "The database is unavailable. Retry later; nothing was recorded."


class ProcessingFailed(ServiceError):
    status, code = 500, "PROCESSING_FAILED"


class InvalidApiKey(ServiceError):
    status, code = 401, "INVALID_API_KEY"
    default_message = "The API key provided is invalid or has been revoked."


class QuotaExceeded(ServiceError):
    status, code = 402, "QUOTA_EXCEEDED"


class IdempotencyKeyReused(ServiceError):
    """The IETF Idempotency-Key draft's answer (422) to a key reused with another request."""

    status, code = 422, "IDEMPOTENCY_KEY_REUSED"
    default_message = (
        "This Idempotency-Key was already used with a different request. "
        "Use a new key for a new request; nothing was done."
    )


class RateLimited(ServiceError):
    status, code = 429, "RATE_LIMITED"

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"Too many requests. Please slow down and retry after {retry_after} seconds.",
            retry_after=retry_after,
        )
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class SyncNotConfigured(ServiceError):
    status, code = 503, "SYNC_NOT_CONFIGURED"
    default_message = (
        "NAT_APP_SYNC_KEY is not configured. "
        "Set this environment variable to enable tenant synchronization."
    )


class InvalidSyncKey(ServiceError):
    status, code = 401, "INVALID_SYNC_KEY"
    default_message = "The sync key provided is invalid."


class UnknownPrice(ServiceError):
    status, code = 400, "UNKNOWN_PRICE"


class NoBillingAccount(ServiceError):
    status, code = 409, "NO_BILLING_ACCOUNT"
    default_message = "This tenant has no Stripe customer yet; start a checkout first."


class BillingNotConfigured(ServiceError):
    status, code = 503, "BILLING_NOT_CONFIGURED"
    default_message = "STRIPE_API_KEY is not configured; checkout and portal are unavailable."


class StripeRequestFailed(ServiceError):
    status, code = 400, "STRIPE_ERROR"


class StripeUnavailable(ServiceError):
    status, code = 503, "STRIPE_UNAVAILABLE"
    default_message = "Stripe did not answer in time. Retry later."

    def __init__(self, message: str | None = None, *, retry_after: int | None = None) -> None:
        super().__init__(message, **({} if retry_after is None else {"retry_after": retry_after}))
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}


class StripeRateLimited(StripeUnavailable):
    """Stripe answered 429; ``retry_after`` is its Retry-After in seconds (bounded)."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, retry_after=retry_after)
        self.retry_after: int = retry_after


_HTTP_CODES = {
    400: "BAD_REQUEST",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    408: "REQUEST_TIMEOUT",
    411: "LENGTH_REQUIRED",
    413: "PAYLOAD_TOO_LARGE",
    414: "URI_TOO_LONG",
    415: "UNSUPPORTED_MEDIA_TYPE",
    431: "HEADERS_TOO_LARGE",
}


def error_response(error: ServiceError) -> Response:
    response = jsonify(error.body())
    response.status_code = error.status
    response.headers.update(error.headers())
    return response


def http_error_response(exc: HTTPException) -> Response:
    status = exc.code or 500
    code = _HTTP_CODES.get(status, "HTTP_ERROR" if status < 500 else "INTERNAL_ERROR")
    response = jsonify({"error": code, "message": exc.description or exc.name, "status": status})
    response.status_code = status
    if status == 405 and hasattr(exc, "valid_methods") and exc.valid_methods:
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response


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


class MalformedBody(ServiceError):
    status, code = 400, "BAD_REQUEST"
    default_message = "The request body is malformed."


def read_timed_out(exc: BaseException, environ: dict[str, Any] | None) -> bool:
    """``exc`` is a body read short because the request's read deadline shut its socket
    (see webhook_service.worker): the client was too slow (408), not malformed (400).

    A body cut short surfaces as werkzeug's ``ClientDisconnected`` (fewer bytes than the
    Content-Length) or, chunked, as gunicorn's ``NoMoreData``/``ParseException``.
    """
    return (
        environ is not None
        and isinstance(exc, (ClientDisconnected, ParseException, NoMoreData))
        and read_deadline_passed(environ)
    )


def service_error_for(exc: Exception, environ: dict[str, Any] | None = None) -> ServiceError:
    """The error answered for ``exc`` (any exception but werkzeug's HTTP ones), logged;
    ``environ``, the request's, tells a body cut by the read deadline (408).

    The one mapping, shared by Flask's error handlers and the webhook's WSGI path.
    """
    if isinstance(exc, ServiceError):
        return exc
    if read_timed_out(exc, environ):
        log.info("request_read_timeout", error=type(exc).__name__)
        return RequestTimeout()
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


def init_app(app: Flask) -> None:
    """Map every error the application can raise to its JSON body."""

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        if read_timed_out(exc, request.environ):
            # The 400 werkzeug raises for a body shorter than its Content-Length: here
            # the read deadline cut it, so the webhook's answer, 408 REQUEST_TIMEOUT.
            return error_response(service_error_for(exc, request.environ))
        return http_error_response(exc)

    @app.errorhandler(Exception)
    def _any_error(exc: Exception) -> Response:
        return error_response(service_error_for(exc, request.environ))
