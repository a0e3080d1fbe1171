"""Tenant endpoints (X-API-Key) and the tenant sync endpoint (X-Sync-Key)."""

from __future__ import annotations

import hmac
from typing import Any

from flask import Blueprint, request

from webhook_service.errors import InvalidRequest, InvalidSyncKey, SyncNotConfigured
from webhook_service.quotas.service import MAX_SPEND_COUNT
from webhook_service.web.current import services
from webhook_service.web.sync_request import parse_sync_request
from webhook_service.web.tenant_api import (
    bind_tenant,
    current_tenant,
    idempotency_key,
    json_body,
    request_api_key,
)

tenant_bp = Blueprint("tenant", __name__)
sync_bp = Blueprint("sync", __name__)


@tenant_bp.get("/api/v1/usage")
def get_usage() -> dict[str, Any]:
    """The tenant's plan, quota and usage in the current window."""
    usage = services().quotas.usage_for_key(request_api_key())
    bind_tenant(usage.tenant_id)
    return usage.body()


@tenant_bp.post("/api/v1/usage/scans")
def spend_scans() -> dict[str, Any]:
    """Spend scans for a scan about to start (402 when the quota cannot cover them)."""
    tenant = current_tenant()
    body = json_body(optional=True)
    count = body.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_SPEND_COUNT:
        raise InvalidRequest(
            f"count must be an integer from 1 to {MAX_SPEND_COUNT}.",
            details=[{"field": "count", "message": "invalid"}],
        )
    result = services().quotas.spend(tenant, count, idempotency_key())
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
