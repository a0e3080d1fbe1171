"""One Stripe delivery, from raw body and signature header to its answer; no web framework.

The webhook's door (:mod:`webhook_service.web.webhook`) reads the body and calls
:func:`receive_delivery`. Errors are raised as :class:`~webhook_service.errors.ServiceError`.
"""

from __future__ import annotations

from typing import Any

import structlog

from webhook_service import metrics
from webhook_service.config import Settings
from webhook_service.errors import (
    InvalidPayload,
    InvalidSignature,
    ProcessingFailed,
    WebhookNotConfigured,
)
from webhook_service.webhooks.eventlog import EventFailed, EventLog
from webhook_service.webhooks.events import parse_event
from webhook_service.webhooks.signature import check_header, verify_signature


def check_configured(settings: Settings) -> None:
    if not settings.webhook_secrets:
        raise WebhookNotConfigured()


def receive_delivery(
    settings: Settings, event_log: EventLog, body: bytes, header: str | None
) -> dict[str, Any]:
    """Verify a Stripe delivery, apply it exactly once, and return the answer's body."""
    bind = structlog.contextvars.bind_contextvars
    try:
        # A delivery without a usable signature header is refused as such, whatever it carries.
        check_header(header)
        try:
            payload = body.decode("utf-8")
        except UnicodeDecodeError:
            # Stripe signs UTF-8 text, and the SDK verifies only text: such a body
            # cannot be a Stripe event, whoever signed it.
            raise InvalidPayload("The body is not UTF-8; Stripe events are UTF-8 JSON.") from None
        verified = verify_signature(
            payload, header, settings.webhook_secrets, settings.webhook_tolerance
        )
    except InvalidSignature as exc:
        metrics.SIGNATURE_FAILURES.labels(exc.reason).inc()
        bind(signature_failure=exc.reason)
        raise
    metrics.SECRET_MATCHES.labels(str(verified.secret_index)).inc()
    bind(secret_index=verified.secret_index)

    event = parse_event(payload)
    bind(event_id=event.id, event_type=event.type)
    type_label = metrics.event_type_label(
        event.type, handled=event_log.router.handler_for(event.type) is not None
    )
    try:
        with metrics.PROCESSING_SECONDS.time():
            receipt = event_log.receive(event)
    except EventFailed as exc:
        metrics.EVENTS.labels(type_label, "failed").inc()
        bind(outcome="failed", error=exc.error)
        raise ProcessingFailed(
            f"The event could not be processed: {exc.error}. It is kept as failed and will be "
            "run again when Stripe retries it.",
            event_id=event.id,
        ) from None
    metrics.EVENTS.labels(type_label, receipt.outcome).inc()
    bind(outcome=receipt.outcome, tenant_id=receipt.tenant_id)
    return {"received": True, "event_id": event.id, "outcome": receipt.outcome}
