"""The whole path, once per backend: a signed event in, a logged outcome out."""

from __future__ import annotations

from collections.abc import Callable

from werkzeug.test import TestResponse

from tests import stripe_events as se
from tests.helpers import count_rows
from webhook_service.db import Database


def test_unknown_event_type_is_logged_as_ignored(
    post_event: Callable[..., TestResponse], database: Database
) -> None:
    """Log an event nobody handles and answer 200 ignored."""
    event = se.event(
        "charge.refund.updated",
        {"id": "re_123", "object": "refund"},
        created=1735689600,
        api_version=se.BASIL_API_VERSION,
    )
    response = post_event(event)
    assert response.status_code == 200
    assert response.json == {"received": True, "event_id": event["id"], "outcome": "ignored"}
    assert (
        count_rows(database, "stripe_events", "id = :id AND outcome = 'ignored'", id=event["id"])
        == 1
    )
