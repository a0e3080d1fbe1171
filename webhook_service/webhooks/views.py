"""The Flask door of the webhook endpoint: its variants (``.../webhook/``) and non-POSTs.

``POST /api/v1/billing/webhook`` itself is served by the plain-WSGI endpoint in
:mod:`webhook_service.webhooks.wsgi`, in front of Flask; both call
:func:`~webhook_service.webhooks.receiver.receive_delivery`.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request
from werkzeug.exceptions import RequestEntityTooLarge

from webhook_service.context import services
from webhook_service.webhooks.receiver import check_configured, receive_delivery, too_large

bp = Blueprint("webhooks", __name__)


@bp.post("/api/v1/billing/webhook")
def receive_webhook() -> dict[str, Any]:
    """Verify a Stripe delivery and apply it exactly once."""
    svc = services()
    check_configured(svc.settings)
    limit = svc.settings.max_webhook_bytes
    # One byte over the limit: werkzeug stops a body sent without Content-Length
    # (chunked) at max_content_length without an error, so a longer one is only seen
    # as a body that fills limit + 1 bytes.
    request.max_content_length = limit + 1
    try:
        body = request.get_data(cache=False)
    except RequestEntityTooLarge:
        raise too_large(limit) from None
    if len(body) > limit:
        raise too_large(limit)
    return receive_delivery(
        svc.settings, svc.event_log, body, request.headers.get("Stripe-Signature")
    )
