"""The handler registry of the service: every Stripe event type it acts on."""

from __future__ import annotations

from webhook_service.quotas.handlers import router as quota_router
from webhook_service.webhooks.registry import Router


def build_router() -> Router:
    """Merge the routers of every domain package."""
    router = Router()
    router.add(quota_router)
    return router
