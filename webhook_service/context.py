"""The per-application services object the views reach through ``services()``."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from webhook_service.billing.stripe_api import StripeGateway
from webhook_service.config import Settings
from webhook_service.db import Database
from webhook_service.quotas.service import QuotaService
from webhook_service.webhooks.eventlog import EventLog


@dataclass
class Services:
    settings: Settings
    database: Database
    event_log: EventLog
    quotas: QuotaService
    stripe: StripeGateway


def services() -> Services:
    found: Services = current_app.extensions["nat"]
    return found
