"""The Stripe API, through the SDK's StripeClient, with bounded time and clear errors.

Every call goes through :class:`StripeGateway`: timeouts are short (a tenant is
waiting), the SDK retries once on network errors and 409/5xx with its own idempotency
keys, and Stripe's errors map to the service's JSON errors, each worded for what
happened (no answer in time, unreachable, rate limited, a server error, a body that is
not JSON, a body without what was asked for). Stripe's request id is logged with every
call.

A tenant request that calls Stripe runs inside :meth:`StripeGateway.session`:

- one deadline (``STRIPE_DEADLINE_SECONDS``) bounds all its calls, retries and backoff
  included, so a stalled Stripe answers 503 ``STRIPE_UNAVAILABLE`` long before
  gunicorn's worker timeout. The SDK takes the HTTP session to use
  (``RequestsClient(session=...)``); ours caps every attempt's timeouts by what is left
  of the deadline (:class:`_DeadlineSession`).
- it holds one of ``BILLING_MAX_CONCURRENCY`` slots shared by every worker of the
  instance (:class:`CallSlots`), or is answered 503 at once: a stalled Stripe holds at
  most that many request threads, so webhooks always find one.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import requests
import stripe
import structlog

from webhook_service.errors import (
    BillingNotConfigured,
    IdempotencyKeyReused,
    StripeRateLimited,
    StripeRequestFailed,
    StripeUnavailable,
)

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 8.0
MAX_NETWORK_RETRIES = 1
EVENTS_PAGE_SIZE = 100
DEADLINE_S = 10.0
# The SDK's retry (after a 0.5 s backoff) is asked for only with this much time left.
MIN_LEFT_FOR_RETRY_S = 2.0
# Retry-After sent with a 503 for Stripe's 429 when Stripe names no delay, and its bounds.
DEFAULT_RETRY_AFTER_S = 1
MAX_RETRY_AFTER_S = 60

# When the current request's Stripe budget runs out (time.monotonic()); None: no deadline.
_deadline: ContextVar[float | None] = ContextVar("stripe_deadline", default=None)


class DeadlineExceeded(requests.exceptions.Timeout):
    """The request's time for Stripe is spent: no further attempt is made."""


class _DeadlineSession(requests.Session):
    """A ``requests`` session whose every attempt ends by the current request's deadline."""

    def request(self, method: str, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        deadline = _deadline.get()
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded("the request's deadline for Stripe has passed")
            kwargs["timeout"] = _capped(kwargs.get("timeout"), left)
        return super().request(method, url, *args, **kwargs)


def _capped(timeout: Any, left: float) -> tuple[float, float]:
    if isinstance(timeout, tuple):
        connect, read = timeout
    else:
        connect = read = timeout
    return (
        left if connect is None else min(float(connect), left),
        left if read is None else min(float(read), left),
    )


class CallSlots:
    """At most ``limit`` holders at once, across the processes forked from the creator.

    Slot ``i`` is a POSIX record lock (``lockf``) on byte ``i`` of an unlinked temporary
    file opened before gunicorn forks its workers (``preload_app``): record locks belong
    to a process, so each worker competes for them, and the kernel frees a killed
    worker's slot. Threads of one process share its locks, so each also notes which
    slots its threads hold. Nothing is left on disk. Taking a slot never waits.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 - held for the object's life
        self._lock = threading.Lock()
        self._held: set[int] = set()
        self._pid = os.getpid()

    def try_acquire(self) -> int | None:
        """A free slot's number (release it), or None when all are taken."""
        with self._lock:
            if self._pid != os.getpid():  # a forked child holds none of its parent's locks
                self._held, self._pid = set(), os.getpid()
            for slot in range(self.limit):
                if slot in self._held:
                    continue
                try:
                    fcntl.lockf(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB, 1, slot)
                except OSError:  # EACCES or EAGAIN: another process holds it
                    continue
                self._held.add(slot)
                return slot
        return None

    def release(self, slot: int) -> None:
        with self._lock:
            self._held.discard(slot)
            fcntl.lockf(self._file.fileno(), fcntl.LOCK_UN, 1, slot)

    def close(self) -> None:
        self._file.close()


def _request_id(exc: stripe.StripeError) -> str | None:
    return exc.request_id if isinstance(exc.request_id, str) else None


def _retry_after(headers: Mapping[str, str] | None) -> int:
    """Stripe's Retry-After (seconds), bounded; a default when absent or not a number."""
    raw = (headers or {}).get("Retry-After") or ""
    try:
        seconds = int(float(raw))
    except ValueError:
        return DEFAULT_RETRY_AFTER_S
    return max(1, min(seconds, MAX_RETRY_AFTER_S))


def _connection_message(exc: stripe.APIConnectionError) -> str:
    if isinstance(exc.__cause__, requests.exceptions.Timeout):
        return "Stripe did not answer in time. Retry later."
    return "Stripe could not be reached. Retry later."


class StripeGateway:
    """The few Stripe API calls this service makes."""

    def __init__(
        self,
        api_key: str | None,
        api_base: str | None = None,
        *,
        read_timeout: float = READ_TIMEOUT_S,
        deadline: float = DEADLINE_S,
        max_concurrency: int | None = None,
    ) -> None:
        self.configured = bool(api_key)
        self.deadline = deadline
        self._client: stripe.StripeClient | None = None
        self._slots: CallSlots | None = None
        if api_key:
            self._client = stripe.StripeClient(
                api_key,
                base_addresses={"api": api_base} if api_base else None,
                max_network_retries=MAX_NETWORK_RETRIES,
                http_client=stripe.RequestsClient(
                    timeout=(CONNECT_TIMEOUT_S, read_timeout), session=_DeadlineSession()
                ),
            )
            if max_concurrency is not None:
                self._slots = CallSlots(max_concurrency)

    @property
    def client(self) -> stripe.StripeClient:
        if self._client is None:
            raise BillingNotConfigured()
        return self._client

    @contextmanager
    def session(self) -> Iterator[None]:
        """Run one tenant request's Stripe calls: a slot, or 503 at once; one deadline."""
        self.client  # noqa: B018 - raises BillingNotConfigured before any work
        slot = self._slots.try_acquire() if self._slots is not None else None
        if self._slots is not None and slot is None:
            log.warning("stripe_calls_at_capacity", limit=self._slots.limit)
            raise StripeUnavailable(
                "Too many billing requests are waiting on Stripe. Retry in a moment.",
                retry_after=DEFAULT_RETRY_AFTER_S,
            )
        token = _deadline.set(time.monotonic() + self.deadline)
        try:
            yield
        finally:
            _deadline.reset(token)
            if self._slots is not None and slot is not None:
                self._slots.release(slot)

    def _call(self, operation: str, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """One raw API call; the JSON body as a dict."""
        deadline = _deadline.get()
        if deadline is not None and deadline - time.monotonic() < MIN_LEFT_FOR_RETRY_S:
            # Too little time for a retry to answer: report this attempt's answer instead.
            kwargs["max_network_retries"] = 0
        try:
            response = self.client.raw_request(method, path, **kwargs)
        except stripe.IdempotencyError as exc:
            log.info(
                "stripe_idempotency_error", operation=operation, stripe_request_id=_request_id(exc)
            )
            raise IdempotencyKeyReused() from None
        except stripe.CardError as exc:
            log.info("stripe_card_error", operation=operation, stripe_request_id=_request_id(exc))
            raise StripeRequestFailed(exc.user_message or "The card was declined.") from None
        except stripe.InvalidRequestError as exc:
            log.info(
                "stripe_invalid_request", operation=operation, stripe_request_id=_request_id(exc)
            )
            raise StripeRequestFailed(
                exc.user_message or "Stripe rejected the request.",
                stripe_code=exc.code,
            ) from None
        except (stripe.AuthenticationError, stripe.PermissionError) as exc:
            log.error(
                "stripe_authentication_failed",
                operation=operation,
                stripe_request_id=_request_id(exc),
            )
            raise StripeUnavailable("Stripe refused this service's API key.") from None
        except stripe.RateLimitError as exc:
            retry_after = _retry_after(exc.headers)
            self._unavailable(operation, exc)
            raise StripeRateLimited(
                f"Stripe is limiting this service's requests. Retry after {retry_after} seconds.",
                retry_after=retry_after,
            ) from None
        except stripe.APIConnectionError as exc:
            self._unavailable(operation, exc)
            raise StripeUnavailable(_connection_message(exc)) from None
        except stripe.APIError as exc:
            self._unavailable(operation, exc)
            status = exc.http_status
            if isinstance(status, int) and status >= 500:
                message = f"Stripe answered with a server error (HTTP {status}). Retry later."
            elif str(exc.user_message or "").startswith("Invalid response body"):
                message = "Stripe answered with a body that is not JSON. Retry later."
            else:
                message = "Stripe answered with an unexpected error. Retry later."
            raise StripeUnavailable(message) from None
        except stripe.StripeError as exc:
            log.error(
                "stripe_error",
                operation=operation,
                error=type(exc).__name__,
                stripe_request_id=_request_id(exc),
            )
            raise StripeUnavailable("Stripe answered with an unexpected error.") from None
        log.info(
            "stripe_call",
            operation=operation,
            stripe_request_id=response.headers.get("request-id"),
            status=response.code,
        )
        body = response.data
        if not isinstance(body, dict):
            raise StripeUnavailable("Stripe answered with an unexpected body. Retry later.")
        return body

    @staticmethod
    def _unavailable(operation: str, exc: stripe.StripeError) -> None:
        log.warning(
            "stripe_unavailable",
            operation=operation,
            error=type(exc).__name__,
            http_status=exc.http_status,
            stripe_request_id=_request_id(exc),
        )

    def _session_url(self, operation: str, body: dict[str, Any]) -> str:
        url = body.get("url")
        if not isinstance(url, str) or not url.startswith("https://"):
            log.warning("stripe_answer_without_url", operation=operation)
            raise StripeUnavailable(
                "Stripe's answer carries no session URL. Retry later; nothing was opened."
            )
        return url

    def create_checkout_session(
        self, params: dict[str, Any], idempotency_key: str
    ) -> dict[str, Any]:
        """The new Checkout Session's ``{"id", "url"}``."""
        operation = "checkout.sessions.create"
        body = self._call(
            operation,
            "post",
            "/v1/checkout/sessions",
            idempotency_key=idempotency_key,
            **params,
        )
        url = self._session_url(operation, body)
        session_id = body.get("id")
        if not isinstance(session_id, str) or not session_id:
            log.warning("stripe_answer_without_id", operation=operation)
            raise StripeUnavailable("Stripe's answer carries no session id. Retry later.")
        return {"id": session_id, "url": url}

    def create_portal_session(self, customer: str, return_url: str) -> dict[str, Any]:
        """The new billing portal session's ``{"url"}``."""
        operation = "billing_portal.sessions.create"
        body = self._call(
            operation,
            "post",
            "/v1/billing_portal/sessions",
            customer=customer,
            return_url=return_url,
        )
        return {"url": self._session_url(operation, body)}

    def price_for_lookup_key(self, lookup_key: str) -> str | None:
        """The id of the active price with ``lookup_key``, if Stripe has one."""
        body = self._call(
            "prices.list",
            "get",
            "/v1/prices",
            lookup_keys=[lookup_key],
            active="true",
            limit=1,
        )
        data = body.get("data")
        if isinstance(data, list) and data and isinstance(data[0], dict):
            price_id = data[0].get("id")
            return price_id if isinstance(price_id, str) else None
        return None

    def events_page(
        self, created_gte: int, types: list[str], starting_after: str | None = None
    ) -> dict[str, Any]:
        """One page of events created at or after ``created_gte`` of ``types``, newest
        first, after the event ``starting_after``: Stripe's list body, unchecked."""
        params: dict[str, Any] = {
            "limit": EVENTS_PAGE_SIZE,
            "created": {"gte": created_gte},
            "types": types,
        }
        if starting_after:
            params["starting_after"] = starting_after
        return self._call("events.list", "get", "/v1/events", **params)
