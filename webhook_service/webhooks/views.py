"""POST /api/v1/billing/webhook: verify, parse, hand to the event log, answer."""

from __future__ import annotations

from typing import Any

import structlog
from flask import Blueprint, request
from werkzeug.exceptions import RequestEntityTooLarge

from webhook_service import metrics
from webhook_service.context import services
from webhook_service.errors import (
    InvalidPayload,
    InvalidSignature,
    PayloadTooLarge,
    ProcessingFailed,
    WebhookNotConfigured,
)
from webhook_service.webhooks.eventlog import EventFailed
from webhook_service.webhooks.events import parse_event
from webhook_service.webhooks.signature import check_header, verify_signature

bp = Blueprint("webhooks", __name__)


@bp.post("/api/v1/billing/webhook")
def receive_webhook() -> dict[str, Any]:
    """Verify a Stripe delivery and apply it exactly once."""
    svc = services()
    settings = svc.settings
    if not settings.webhook_secrets:
        raise WebhookNotConfigured()
    limit = settings.max_webhook_bytes
    # One byte over the limit: werkzeug stops a body sent without Content-Length
    # (chunked) at max_content_length without an error, so a longer one is only seen
    # as a body that fills limit + 1 bytes.
    request.max_content_length = limit + 1
    try:
        body = request.get_data(cache=False)
    except RequestEntityTooLarge:
        body = None
    if body is None or len(body) > limit:
        raise PayloadTooLarge(f"The body is larger than MAX_WEBHOOK_BYTES ({limit} bytes).")
    header = request.headers.get("Stripe-Signature")
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
        structlog.contextvars.bind_contextvars(signature_failure=exc.reason)
        raise
    metrics.SECRET_MATCHES.labels(str(verified.secret_index)).inc()
    structlog.contextvars.bind_contextvars(secret_index=verified.secret_index)

    event = parse_event(payload)
    structlog.contextvars.bind_contextvars(event_id=event.id, event_type=event.type)
    try:
        with metrics.PROCESSING_SECONDS.time():
            receipt = svc.event_log.receive(event)
    except EventFailed as exc:
        metrics.EVENTS.labels(event.type, "failed").inc()
        structlog.contextvars.bind_contextvars(outcome="failed", error=exc.error)
        raise ProcessingFailed(
            f"The event could not be processed: {exc.error}. It is kept as failed and will be "
            "run again when Stripe retries it.",
            event_id=event.id,
        ) from None
    metrics.EVENTS.labels(event.type, receipt.outcome).inc()
    structlog.contextvars.bind_contextvars(outcome=receipt.outcome, tenant_id=receipt.tenant_id)
    return {"received": True, "event_id": event.id, "outcome": receipt.outcome}
