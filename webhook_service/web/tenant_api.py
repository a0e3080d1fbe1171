"""What every tenant endpoint shares: X-API-Key authentication, JSON bodies, rate limits."""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any

import structlog
from flask import Blueprint, Flask, Response, g, request

from webhook_service.config import Settings
from webhook_service.errors import InvalidApiKey, InvalidRequest, RateLimited
from webhook_service.quotas.service import TenantRef
from webhook_service.web.current import services
from webhook_service.web.ratelimit import FixedWindowLimit, GuardedStorage, make_storage

BEARER_HINT = "Send the key in the X-API-Key header, not as Authorization: Bearer."
# One rule for every endpoint that takes an Idempotency-Key (Stripe's: at most 255
# characters), of printable ASCII as the IETF draft's sf-string has it.
IDEMPOTENCY_KEY_MAX_LENGTH = 255
_IDEMPOTENCY_KEY_RE = re.compile(rf"[\x20-\x7e]{{1,{IDEMPOTENCY_KEY_MAX_LENGTH}}}")


def rate_limit_bucket() -> str:
    """Count per API key (hashed); requests without one count per client address."""
    key = request.headers.get("X-API-Key")
    if key:
        return "key:" + hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()
    return f"addr:{request.remote_addr}"


# A credential that authenticated is remembered this long, so that it still gets through
# while its address is refused for failed attempts (other tenants behind the same NAT).
KNOWN_GOOD_FOR = "1/day"
REMARK_AFTER_S = 3600.0
MAX_MARKED = 100_000


def _credential_bucket(blueprint: str | None) -> str | None:
    """The bucket of the credential the request presents (API key or sync key), if any."""
    if blueprint == "sync":
        given = request.headers.get("X-Sync-Key")
        if not given:
            return None
        digest = hashlib.sha256(given.encode("utf-8", "replace")).hexdigest()
        return f"sync:{digest}"
    if request.headers.get("X-API-Key"):
        return rate_limit_bucket()
    return None


def init_rate_limit(
    app: Flask, *blueprints: Blueprint, auth_blueprints: tuple[Blueprint, ...] = ()
) -> FixedWindowLimit:
    """Limit ``blueprints`` to RATE_LIMIT per API key; answer 429 RATE_LIMITED.

    One fixed window per key, shared by every endpoint of ``blueprints`` (not one per
    route), counted in RATELIMIT_STORAGE_URI (in memory if it fails: an outage of the
    store must not stop scans). The webhook, sync and operations endpoints, and requests
    that match no route, are not counted.

    Failed authentications (401 on ``blueprints`` and ``auth_blueprints``: a wrong
    X-API-Key or X-Sync-Key) are counted per client address in the same storage and
    window; past RATE_LIMIT of them the address is refused with 429 before any key is
    looked up, except for credentials that authenticated within the last day (so other
    tenants behind the same address keep working).
    """
    settings: Settings = app.extensions["nat"].settings
    # One storage, one fallback: an outage found by one limit moves them all to memory.
    storage = GuardedStorage(make_storage(settings.ratelimit_storage_uri))
    limit = FixedWindowLimit(settings.rate_limit, storage, key_prefix="nat", scope="tenant-api")
    failures = FixedWindowLimit(
        settings.rate_limit, storage, key_prefix="nat", scope="auth-failures"
    )
    known_good = FixedWindowLimit(KNOWN_GOOD_FOR, storage, key_prefix="nat", scope="auth-ok")
    marked: dict[str, float] = {}
    limited = frozenset(blueprint.name for blueprint in blueprints)
    guarded = limited | frozenset(blueprint.name for blueprint in auth_blueprints)

    @app.before_request
    def _rate_limit() -> None:
        blueprint = request.blueprint
        if blueprint not in guarded:
            return
        address = f"addr:{request.remote_addr}"
        retry_after = failures.blocked(address)
        if retry_after is not None:
            credential = _credential_bucket(blueprint)
            if credential is None or not known_good.seen(credential):
                raise RateLimited(retry_after)
        if blueprint in limited:
            retry_after = limit.hit(rate_limit_bucket())
            if retry_after is not None:
                raise RateLimited(retry_after)

    @app.after_request
    def _count_authentication(response: Response) -> Response:
        blueprint = request.blueprint
        if blueprint in guarded:
            if response.status_code == 401:
                failures.hit(f"addr:{request.remote_addr}")
            elif 200 <= response.status_code < 300:
                credential = _credential_bucket(blueprint)
                # Marked in the storage at most once an hour per process: one write, not
                # one per request.
                now = time.monotonic()
                if credential is not None and marked.get(credential, 0.0) < now:
                    known_good.mark(credential)
                    if len(marked) >= MAX_MARKED:
                        marked.clear()
                    marked[credential] = now + REMARK_AFTER_S
        return response

    app.extensions["nat_limiter"] = limit
    return limit


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


def idempotency_key() -> str | None:
    """The request's Idempotency-Key, if any (400 INVALID_REQUEST if malformed)."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not _IDEMPOTENCY_KEY_RE.fullmatch(key):
        raise InvalidRequest(
            f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX_LENGTH} printable ASCII "
            "characters.",
            details=[{"field": "Idempotency-Key", "message": "invalid"}],
        )
    return key


def json_body(*, optional: bool = False) -> dict[str, Any]:
    """The request's JSON object (400 INVALID_REQUEST otherwise); ``{}`` if optional and empty."""
    if optional and not request.get_data(cache=True):
        return {}
    body = request.get_json(silent=True, force=True)
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object.")
    return body
