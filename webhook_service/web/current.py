"""What a view reaches through Flask's application context: the app's services."""

from __future__ import annotations

from flask import current_app

from webhook_service.services import Services


def services() -> Services:
    found: Services = current_app.extensions["nat"]
    return found
