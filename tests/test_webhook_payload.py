"""What a verified delivery must carry, and the HTTP surface around the webhook.

A body that verifies but is not a Stripe v1 event is a 400 ``INVALID_PAYLOAD``; a body
over ``MAX_WEBHOOK_BYTES`` is a 413, also when it comes chunked. Every error is JSON,
every response has an ``X-Request-ID``, and no URL spelling gets a redirect.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests import stripe_events as se
from tests.helpers import WEBHOOK_SECRET, count_rows
from webhook_service.db import Database

WEBHOOK = "/api/v1/billing/webhook"


def refund_event(**extra: Any) -> dict[str, Any]:
    """A small event of a type nobody handles."""
    return se.event(
        "charge.refund.updated",
        {"id": se.new_id("re"), "object": "refund", **extra},
        created=1735689600,
        api_version=se.BASIL_API_VERSION,
    )


def assert_error(response: TestResponse, status: int, code: str) -> dict[str, Any]:
    """The JSON error body of ``response``, checked for its shape."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.json
    assert isinstance(body, dict)
    assert body["error"] == code
    assert body["status"] == status
    assert isinstance(body["message"], str)
    assert body["message"]
    return body


def signed_bytes(body: bytes) -> dict[str, str]:
    return {"Stripe-Signature": se.sign_bytes(body, WEBHOOK_SECRET)}


# --------------------------------------------------------------------------- payloads


def test_signed_body_that_is_not_json_is_invalid_payload(
    post_event: Callable[..., TestResponse], database: Database
) -> None:
    """Refuse a verified body that is not JSON, and log nothing."""
    response = post_event(b"this is not json")
    body = assert_error(response, 400, "INVALID_PAYLOAD")
    assert "JSON" in body["message"]
    assert count_rows(database, "stripe_events") == 0


def test_signed_body_that_is_not_utf8_is_invalid_payload(
    client: FlaskClient, database: Database
) -> None:
    """Refuse a correctly signed body that is not UTF-8 text."""
    raw = b'{"id": "evt_\xff\xfe", "object": "event"}'
    response = client.post(WEBHOOK, data=raw, headers=signed_bytes(raw))
    body = assert_error(response, 400, "INVALID_PAYLOAD")
    assert "UTF-8" in body["message"]
    assert count_rows(database, "stripe_events") == 0


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        pytest.param([], "not a Stripe event", id="array"),
        pytest.param("evt_123", "not a Stripe event", id="string"),
        pytest.param({"hello": "world"}, "'id'", id="object"),
        pytest.param({"type": "invoice.paid", "created": 1735689600}, "'id'", id="no-id"),
        pytest.param({"id": "evt_1", "created": 1735689600}, "'type'", id="no-type"),
        pytest.param({"id": "evt_1", "type": "invoice.paid"}, "'created'", id="no-created"),
        pytest.param(
            {"id": "evt_1", "type": "invoice.paid", "created": "2025-01-01"},
            "'created'",
            id="created-string",
        ),
        pytest.param(
            {"id": "in_1", "type": "invoice.paid", "created": 1735689600}, "'id'", id="not-evt"
        ),
        pytest.param(
            {"id": "evt_1", "object": "event", "type": "invoice.paid", "created": 1735689600},
            "data.object",
            id="no-data",
        ),
        pytest.param(
            {"id": "evt_" + "x" * 252, "type": "invoice.paid", "created": 1735689600},
            "'id'",
            id="id-too-long",
        ),
        pytest.param(
            {"id": "evt_1", "type": "invoice.paid", "created": -1},
            "'created'",
            id="created-negative",
        ),
        pytest.param(
            {"id": "evt_1", "type": "invoice.paid", "created": 2**70},
            "'created'",
            id="created-huge",
        ),
        pytest.param(
            {"id": "evt_1", "type": "invoice.paid", "created": True}, "'created'", id="created-bool"
        ),
    ],
)
def test_json_that_is_not_an_event_is_invalid_payload(
    post_event: Callable[..., TestResponse], database: Database, document: Any, fragment: str
) -> None:
    """Refuse verified JSON that lacks what every Stripe v1 event has."""
    response = post_event(json.dumps(document).encode("utf-8"))
    body = assert_error(response, 400, "INVALID_PAYLOAD")
    assert fragment in body["message"]
    assert count_rows(database, "stripe_events") == 0


def test_thin_v2_event_is_invalid_payload(
    post_event: Callable[..., TestResponse], database: Database
) -> None:
    """Refuse a v2 thin event notification, pointing at snapshot events."""
    thin = {
        "id": "evt_test_65R6IiXvwGspFGsQmlF16RRrlDSQ0Grw2jPnw2tz9eEfv",
        "object": "v2.core.event",
        "type": "v1.billing.meter.error_report_triggered",
        "livemode": False,
        "created": "2024-09-17T06:20:52.246Z",
        "related_object": {
            "id": "mtr_test_61R6IiXvwGspFGsQm41KxmeRX1Pk3LVc",
            "type": "billing.meter",
            "url": "/v1/billing/meters/mtr_test_61R6IiXvwGspFGsQm41KxmeRX1Pk3LVc",
        },
    }
    response = post_event(json.dumps(thin, indent=2).encode("utf-8"))
    body = assert_error(response, 400, "INVALID_PAYLOAD")
    assert "v2" in body["message"]
    assert "snapshot" in body["message"]
    assert count_rows(database, "stripe_events") == 0


def test_odd_but_valid_event_is_logged(
    post_event: Callable[..., TestResponse], database: Database
) -> None:
    """Log an event whose object id is too long to index, without that id (not a 500)."""
    event = refund_event()
    event["data"]["object"]["id"] = "re_" + "x" * 300
    response = post_event(event)
    assert response.status_code == 200
    assert (
        count_rows(database, "stripe_events", "id = :id AND object_id IS NULL", id=event["id"]) == 1
    )


def oversized_event(limit: int) -> bytes:
    """A genuine-looking event whose rendering is just over ``limit`` bytes."""
    event = refund_event(description="x")
    base = len(se.render(event))
    event["data"]["object"]["description"] = "x" * (limit - base + 2)
    body = se.render(event)
    assert len(body) == limit + 1
    return body


def test_body_over_the_limit_is_413(make_app: Callable[..., Flask], database: Database) -> None:
    """Refuse a body one byte over MAX_WEBHOOK_BYTES with 413, even correctly signed."""
    client = make_app(MAX_WEBHOOK_BYTES="2048").test_client()
    body = oversized_event(2048)
    response = client.post(WEBHOOK, data=body, headers=signed_bytes(body))
    message = assert_error(response, 413, "PAYLOAD_TOO_LARGE")["message"]
    assert "MAX_WEBHOOK_BYTES" in message
    assert "2048" in message
    assert count_rows(database, "stripe_events") == 0


def test_body_at_the_limit_is_accepted(make_app: Callable[..., Flask], database: Database) -> None:
    """Accept a body of exactly MAX_WEBHOOK_BYTES."""
    client = make_app(MAX_WEBHOOK_BYTES="2048").test_client()
    event = refund_event(description="x")
    event["data"]["object"]["description"] = "x" * (2048 - len(se.render(event)) + 1)
    body = se.render(event)
    assert len(body) == 2048
    response = client.post(WEBHOOK, data=body, headers=signed_bytes(body))
    assert response.status_code == 200
    assert count_rows(database, "stripe_events") == 1


@pytest.mark.parametrize("extra", [1, 100_000], ids=["one-byte-over", "far-over"])
def test_chunked_body_over_the_limit_is_413(
    make_app: Callable[..., Flask], database: Database, extra: int
) -> None:
    """Refuse a body over the limit sent chunked, without Content-Length."""
    client = make_app(MAX_WEBHOOK_BYTES="2048").test_client()
    body = oversized_event(2048) + b" " * (extra - 1)
    response = client.post(
        WEBHOOK,
        input_stream=io.BytesIO(body),
        headers={"Transfer-Encoding": "chunked", **signed_bytes(body)},
        # What gunicorn tells the application when it decodes a chunked body itself.
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert count_rows(database, "stripe_events") == 0


def test_chunked_body_within_the_limit_is_accepted(client: FlaskClient, database: Database) -> None:
    """Accept a signed event sent chunked, without Content-Length."""
    event = refund_event()
    body = se.render(event)
    response = client.post(
        WEBHOOK,
        input_stream=io.BytesIO(body),
        headers={"Transfer-Encoding": "chunked", **signed_bytes(body)},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 200
    assert count_rows(database, "stripe_events", "id = :id", id=event["id"]) == 1


# --------------------------------------------------------------------------- HTTP surface


def test_unknown_route_is_json_404(client: FlaskClient) -> None:
    """Answer an unknown URL with a JSON 404."""
    assert_error(client.get("/api/v1/nothing-here"), 404, "NOT_FOUND")
    assert_error(client.post("/api/v1/billing/webhooks"), 404, "NOT_FOUND")


def test_wrong_method_is_json_405(client: FlaskClient) -> None:
    """Answer GET on the webhook with a JSON 405 that lists the allowed methods."""
    response = client.get(WEBHOOK)
    assert_error(response, 405, "METHOD_NOT_ALLOWED")
    assert "POST" in response.headers["Allow"]
    assert_error(client.put(WEBHOOK), 405, "METHOD_NOT_ALLOWED")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", WEBHOOK),
        ("GET", WEBHOOK),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/nowhere"),
    ],
)
def test_every_response_has_a_request_id(client: FlaskClient, method: str, path: str) -> None:
    """Echo a well-formed X-Request-ID; generate one when none (or a bad one) is sent."""
    echoed = client.open(path, method=method, headers={"X-Request-ID": "req-abc.123:XYZ"})
    assert echoed.headers["X-Request-ID"] == "req-abc.123:XYZ"
    first = client.open(path, method=method)
    second = client.open(path, method=method)
    generated = {first.headers["X-Request-ID"], second.headers["X-Request-ID"]}
    assert len(generated) == 2
    assert all(generated)
    hostile = client.open(path, method=method, headers={"X-Request-ID": "a b\tc" + "x" * 200})
    assert hostile.headers["X-Request-ID"] not in ("", "a b\tc" + "x" * 200)


@pytest.mark.parametrize(
    "path",
    [
        WEBHOOK + "/",
        "/" + WEBHOOK,
        "/api/v1//billing/webhook",
        "/api/v1/billing//webhook/",
        "/api/v1/billing/webhook//",
        "/API/v1/billing/webhook",
    ],
)
def test_odd_url_spellings_never_redirect(
    client: FlaskClient, database: Database, path: str
) -> None:
    """Never answer 3xx (Stripe counts a redirect as a failed delivery)."""
    event = refund_event()
    body = se.render(event)
    response = client.post(path, data=body, headers=signed_bytes(body))
    assert not 300 <= response.status_code < 400
    assert "Location" not in response.headers
    assert response.mimetype == "application/json"
    if response.status_code == 200:
        assert count_rows(database, "stripe_events", "id = :id", id=event["id"]) == 1
    else:
        assert_error(response, 404, "NOT_FOUND")


def test_trailing_slash_delivers(client: FlaskClient, database: Database) -> None:
    """Deliver to the webhook with a trailing slash, as an endpoint URL may be typed."""
    event = refund_event()
    body = se.render(event)
    response = client.post(WEBHOOK + "/", data=body, headers=signed_bytes(body))
    assert response.status_code == 200
    assert count_rows(database, "stripe_events", "id = :id", id=event["id"]) == 1
