"""Tenant endpoints (X-API-Key) and the tenant sync endpoint (X-Sync-Key)."""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from typing import Any

import structlog
from flask import Blueprint, Flask, Response, g, request
from flask_limiter import Limiter
from flask_limiter.errors import RateLimitExceeded

from webhook_service.context import services
from webhook_service.errors import (
    InvalidApiKey,
    InvalidRequest,
    InvalidSyncKey,
    RateLimited,
    SyncNotConfigured,
    error_response,
)
from webhook_service.quotas.service import MAX_SPEND_COUNT, TenantRef, parse_sync_request

tenant_bp = Blueprint("tenant", __name__)
sync_bp = Blueprint("sync", __name__)

BEARER_HINT = "Send the key in the X-API-Key header, not as Authorization: Bearer."


def rate_limit_bucket() -> str:
    """Count per API key (hashed); requests without one count per client address."""
    key = request.headers.get("X-API-Key")
    if key:
        return "key:" + hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()
    return f"addr:{request.remote_addr}"


def init_app(app: Flask) -> None:
    """Register the tenant and sync endpoints and the per-key rate limit."""
    settings = app.extensions["nat"].settings
    limiter = Limiter(
        rate_limit_bucket,
        app=app,
        storage_uri=settings.ratelimit_storage_uri,
        strategy="fixed-window",
        key_prefix="nat",
        headers_enabled=False,
        swallow_errors=True,
        in_memory_fallback_enabled=True,
    )
    limiter.limit(settings.rate_limit)(tenant_bp)
    app.extensions["nat_limiter"] = limiter

    @app.errorhandler(RateLimitExceeded)
    def _rate_limited(_exc: RateLimitExceeded) -> Response:
        current = limiter.current_limit
        reset_at = current.reset_at if current is not None else time.time() + 1
        return error_response(RateLimited(max(1, math.ceil(reset_at - time.time()))))

    app.register_blueprint(tenant_bp)
    app.register_blueprint(sync_bp)


def current_tenant() -> TenantRef:
    """The tenant of the request's X-API-Key (401 otherwise)."""
    found: TenantRef | None = g.get("tenant")
    if found is not None:
        return found
    key = request.headers.get("X-API-Key")
    if key is None:
        authorization = request.headers.get("Authorization", "")
        if authorization.lower().startswith("bearer "):
            raise InvalidApiKey(hint=BEARER_HINT)
    tenant = services().quotas.authenticate(key)
    g.tenant = tenant
    structlog.contextvars.bind_contextvars(tenant_id=tenant.id)
    return tenant


def _json_body(*, optional: bool = False) -> dict[str, Any]:
    if optional and not request.get_data(cache=True):
        return {}
    body = request.get_json(silent=True, force=True)
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object.")
    return body


@tenant_bp.get("/api/v1/usage")
def get_usage() -> dict[str, Any]:
    """The tenant's plan, quota and usage in the current window."""
    tenant = current_tenant()
    return services().quotas.usage(tenant).body()


@tenant_bp.post("/api/v1/usage/scans")
def spend_scans() -> dict[str, Any]:
    """Spend scans for a scan about to start (402 when the quota cannot cover them)."""
    tenant = current_tenant()
    body = _json_body(optional=True)
    count = body.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_SPEND_COUNT:
        raise InvalidRequest(
            f"count must be an integer from 1 to {MAX_SPEND_COUNT}.",
            details=[{"field": "count", "message": "invalid"}],
        )
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 255:
        raise InvalidRequest("Idempotency-Key must be 1 to 255 characters.")
    result = services().quotas.spend(tenant, count, key)
    return result.body


@sync_bp.post("/api/v1/tenants/sync")
def sync_tenants() -> dict[str, int]:
    """Upsert tenants and their keys from the NAT app, all or nothing."""
    expected = services().settings.sync_key
    if not expected:
        raise SyncNotConfigured()
    given = request.headers.get("X-Sync-Key", "")
    if not hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8")):
        raise InvalidSyncKey()
    entries = parse_sync_request(request.get_json(silent=True, force=True))
    result = services().quotas.sync(entries)
    return {"synced": result.synced, "created": result.created, "updated": result.updated}
