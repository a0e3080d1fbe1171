"""The Stripe API, through the SDK's StripeClient, with bounded time and clear errors.

Every call goes through :class:`StripeGateway`: timeouts are short (a tenant is
waiting), the SDK retries once on network errors and 409/429/5xx with its own
idempotency keys, and Stripe's errors map to the service's JSON errors. Stripe's
request id is logged with every call.
"""

from __future__ import annotations

import json
from typing import Any

import stripe
import structlog

from webhook_service.errors import (
    BillingNotConfigured,
    StripeRateLimited,
    StripeRequestFailed,
    StripeUnavailable,
)

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 8.0
MAX_NETWORK_RETRIES = 1
EVENTS_PAGE_SIZE = 100


def _request_id(exc: stripe.StripeError) -> str | None:
    return exc.request_id if isinstance(exc.request_id, str) else None


def _retry_after(exc: stripe.StripeError) -> float | None:
    """Stripe's Retry-After (seconds) on a 429, if it sent a usable one."""
    for name, value in (exc.headers or {}).items():
        if name.lower() == "retry-after":
            try:
                seconds = float(value)
            except (TypeError, ValueError):
                return None
            return seconds if 0 <= seconds < float("inf") else None
    return None


class StripeGateway:
    """The few Stripe API calls this service makes."""

    def __init__(
        self,
        api_key: str | None,
        api_base: str | None = None,
        *,
        read_timeout: float = READ_TIMEOUT_S,
    ) -> None:
        self.configured = bool(api_key)
        self._client: stripe.StripeClient | None = None
        if api_key:
            self._client = stripe.StripeClient(
                api_key,
                base_addresses={"api": api_base} if api_base else None,
                max_network_retries=MAX_NETWORK_RETRIES,
                http_client=stripe.RequestsClient(timeout=(CONNECT_TIMEOUT_S, read_timeout)),
            )

    @property
    def client(self) -> stripe.StripeClient:
        if self._client is None:
            raise BillingNotConfigured()
        return self._client

    def _call(self, operation: str, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """One raw API call; the JSON body as a dict."""
        try:
            response = self.client.raw_request(method, path, **kwargs)
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
            log.warning(
                "stripe_rate_limited", operation=operation, stripe_request_id=_request_id(exc)
            )
            raise StripeRateLimited(_retry_after(exc)) from None
        except (stripe.APIConnectionError, stripe.APIError) as exc:
            log.warning(
                "stripe_unavailable",
                operation=operation,
                error=type(exc).__name__,
                stripe_request_id=_request_id(exc),
            )
            raise StripeUnavailable() from None
        except stripe.StripeError as exc:
            log.error(
                "stripe_error",
                operation=operation,
                error=type(exc).__name__,
                stripe_request_id=_request_id(exc),
            )
            raise StripeUnavailable("Stripe answered with an unexpected error.") from None
        body = json.loads(response.body)
        log.info(
            "stripe_call",
            operation=operation,
            stripe_request_id=response.headers.get("request-id"),
            status=response.code,
        )
        if not isinstance(body, dict):
            raise StripeUnavailable("Stripe answered with an unexpected body.")
        return body

    def create_checkout_session(
        self, params: dict[str, Any], idempotency_key: str
    ) -> dict[str, Any]:
        return self._call(
            "checkout.sessions.create",
            "post",
            "/v1/checkout/sessions",
            idempotency_key=idempotency_key,
            **params,
        )

    def create_portal_session(self, customer: str, return_url: str) -> dict[str, Any]:
        return self._call(
            "billing_portal.sessions.create",
            "post",
            "/v1/billing_portal/sessions",
            customer=customer,
            return_url=return_url,
        )

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
