"""The composition root: the services one process builds from its settings.

The web app (:mod:`webhook_service.web.app`) and the CLI both build them here, so the
handler registry and the service objects are wired in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

from webhook_service.billing.stripe_api import StripeGateway
from webhook_service.config import Settings
from webhook_service.db import Database
from webhook_service.quotas.event_handlers import router as quota_router
from webhook_service.quotas.service import QuotaService
from webhook_service.webhooks.eventlog import EventLog
from webhook_service.webhooks.registry import Router


def build_router() -> Router:
    """Every Stripe event type the service acts on: the routers of the domain packages."""
    router = Router()
    router.add(quota_router)
    return router


@dataclass
class Services:
    settings: Settings
    database: Database
    event_log: EventLog
    quotas: QuotaService
    stripe: StripeGateway


def build_services(settings: Settings) -> Services:
    """The services of one serving process."""
    database = Database(settings.database_url)
    return Services(
        settings=settings,
        database=database,
        event_log=EventLog(database, build_router(), settings.catalog),
        quotas=QuotaService(database, settings.catalog),
        stripe=StripeGateway(
            settings.stripe_api_key,
            settings.stripe_api_base,
            deadline=settings.stripe_deadline_seconds,
            max_concurrency=settings.billing_max_concurrency,
        ),
    )
