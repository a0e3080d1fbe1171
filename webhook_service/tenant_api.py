"""What every tenant endpoint shares: X-API-Key authentication, JSON bodies, rate limits."""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any

import structlog
from flask import Blueprint, Flask, Response, g, request
from flask_limiter import Limiter
from flask_limiter.errors import RateLimitExceeded

from webhook_service.config import Settings
from webhook_service.context import services
from webhook_service.errors import InvalidApiKey, InvalidRequest, RateLimited, error_response
from webhook_service.quotas.service import TenantRef

BEARER_HINT = "Send the key in the X-API-Key header, not as Authorization: Bearer."


def rate_limit_bucket() -> str:
    """Count per API key (hashed); requests without one count per client address."""
    key = request.headers.get("X-API-Key")
    if key:
        return "key:" + hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()
    return f"addr:{request.remote_addr}"


def init_rate_limit(app: Flask, *blueprints: Blueprint) -> Limiter:
    """Limit ``blueprints`` to RATE_LIMIT per API key; answer 429 RATE_LIMITED."""
    settings: Settings = app.extensions["nat"].settings
    limiter = Limiter(
        rate_limit_bucket,
        app=app,
        storage_uri=settings.ratelimit_storage_uri,
        strategy="fixed-window",
        key_prefix="nat",
        headers_enabled=False,
        # A rate-limit store outage must not stop scans: fall back to counting in memory.
        swallow_errors=True,
        in_memory_fallback_enabled=True,
    )
    # One budget per key across every tenant endpoint (not one per route).
    shared = limiter.shared_limit(settings.rate_limit, scope="tenant-api")
    for blueprint in blueprints:
        shared(blueprint)
    limited = frozenset(blueprint.name for blueprint in blueprints)

    @limiter.request_filter
    def _not_a_tenant_endpoint() -> bool:
        # The webhook, sync and operations endpoints skip the limiter's work entirely.
        return request.blueprint not in limited

    @app.errorhandler(RateLimitExceeded)
    def _rate_limited(_exc: RateLimitExceeded) -> Response:
        current = limiter.current_limit
        reset_at = current.reset_at if current is not None else time.time() + 1
        return error_response(RateLimited(max(1, math.ceil(reset_at - time.time()))))

    app.extensions["nat_limiter"] = limiter
    return limiter


def request_api_key() -> str | None:
    """The request's X-API-Key; a key sent as ``Authorization: Bearer`` gets a hint."""
    key = request.headers.get("X-API-Key")
    if key is None:
        authorization = request.headers.get("Authorization", "")
        if authorization.lower().startswith("bearer "):
            raise InvalidApiKey(hint=BEARER_HINT)
    return key


def bind_tenant(tenant_id: str) -> None:
    """Name the tenant on the request's log line."""
    structlog.contextvars.bind_contextvars(tenant_id=tenant_id)


def current_tenant() -> TenantRef:
    """The tenant of the request's X-API-Key (401 INVALID_API_KEY otherwise)."""
    found: TenantRef | None = g.get("tenant")
    if found is not None:
        return found
    tenant = services().quotas.authenticate(request_api_key())
    g.tenant = tenant
    bind_tenant(tenant.id)
    return tenant


def json_body(*, optional: bool = False) -> dict[str, Any]:
    """The request's JSON object (400 INVALID_REQUEST otherwise); ``{}`` if optional and empty."""
    if optional and not request.get_data(cache=True):
        return {}
    body = request.get_json(silent=True, force=True)
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object.")
    return body
