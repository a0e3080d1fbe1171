"""The exception tree of the service: plain exceptions with a stable code and a message.

Domain code raises these; it never builds HTTP responses itself. The web layer
(:mod:`webhook_service.web.errors`) is the one place that turns them, and every other
exception, into an HTTP status and a JSON body.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """An error with a stable code, a message safe to show the caller, and facts
    (``extra``) that go with it. Which HTTP status answers a code is the web's business
    (:mod:`webhook_service.web.errors`)."""

    code: str = "INTERNAL_ERROR"
    default_message: str = "An internal error occurred."
    retry_after: int | None = None

    def __init__(self, message: str | None = None, **extra: Any) -> None:
        self.message = message or self.default_message
        self.extra = extra
        super().__init__(self.message)


class InvalidSignature(ServiceError):
    code = "INVALID_SIGNATURE"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class InvalidPayload(ServiceError):
    code = "INVALID_PAYLOAD"


class InvalidRequest(ServiceError):
    code = "INVALID_REQUEST"


class PayloadTooLarge(ServiceError):
    code = "PAYLOAD_TOO_LARGE"
    default_message = "The request body is larger than this endpoint accepts."


class WebhookNotConfigured(ServiceError):
    code = "WEBHOOK_NOT_CONFIGURED"
    default_message = (
        "STRIPE_WEBHOOK_SECRET is not configured; events cannot be verified, so none is accepted."
    )


class RequestTimeout(ServiceError):
    code = "REQUEST_TIMEOUT"
    default_message = "The request was not received in full in time."


class NotReady(ServiceError):
    """``/readyz``: what is wrong, check by check (``checks``), for a load balancer."""

    code = "NOT_READY"


class ServiceUnavailable(ServiceError):
    code = "SERVICE_UNAVAILABLE"
    default_message = "The database is unavailable. Retry later; nothing was recorded."


class ProcessingFailed(ServiceError):
    code = "PROCESSING_FAILED"


class InvalidApiKey(ServiceError):
    code = "INVALID_API_KEY"
    default_message = "The API key provided is invalid or has been revoked."


class QuotaExceeded(ServiceError):
    code = "QUOTA_EXCEEDED"


class IdempotencyKeyReused(ServiceError):
    """The IETF Idempotency-Key draft's answer (422) to a key reused with another request."""

    code = "IDEMPOTENCY_KEY_REUSED"
    default_message = (
        "This Idempotency-Key was already used with a different request. "
        "Use a new key for a new request; nothing was done."
    )


class RateLimited(ServiceError):
    code = "RATE_LIMITED"

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"Too many requests. Please slow down and retry after {retry_after} seconds.",
            retry_after=retry_after,
        )
        self.retry_after: int | None = retry_after


class SyncNotConfigured(ServiceError):
    code = "SYNC_NOT_CONFIGURED"
    default_message = (
        "NAT_APP_SYNC_KEY is not configured. "
        "Set this environment variable to enable tenant synchronization."
    )


class InvalidSyncKey(ServiceError):
    code = "INVALID_SYNC_KEY"
    default_message = "The sync key provided is invalid."


class UnknownPrice(ServiceError):
    code = "UNKNOWN_PRICE"


class NoBillingAccount(ServiceError):
    code = "NO_BILLING_ACCOUNT"
    default_message = "This tenant has no Stripe customer yet; start a checkout first."


class BillingNotConfigured(ServiceError):
    code = "BILLING_NOT_CONFIGURED"
    default_message = "STRIPE_API_KEY is not configured; checkout and portal are unavailable."


class StripeRequestFailed(ServiceError):
    code = "STRIPE_ERROR"


class StripeUnavailable(ServiceError):
    code = "STRIPE_UNAVAILABLE"
    default_message = "Stripe did not answer in time. Retry later."

    def __init__(self, message: str | None = None, *, retry_after: int | None = None) -> None:
        super().__init__(message, **({} if retry_after is None else {"retry_after": retry_after}))
        self.retry_after: int | None = retry_after


class StripeRateLimited(StripeUnavailable):
    """Stripe answered 429; ``retry_after`` is its Retry-After in seconds (bounded)."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, retry_after=retry_after)
        self.retry_after: int = retry_after


class MalformedBody(ServiceError):
    code = "BAD_REQUEST"
    default_message = "The request body is malformed."
