"""The webhook's plain-WSGI door: the same answers as the Flask routes, bodies read safely."""

from __future__ import annotations

import io
import json
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from tests import stripe_events as se
from tests.helpers import WEBHOOK_SECRET
from webhook_service.web import webhook as wsgi

WEBHOOK = "/api/v1/billing/webhook"


def _answer(client: FlaskClient, path: str, body: bytes, **headers: str) -> tuple[int, Any, Any]:
    response = client.post(path, data=body, headers=headers)
    return response.status_code, response.get_json(), response.headers


def test_same_answer_as_the_flask_route(client: FlaskClient) -> None:
    """POST .../webhook (WSGI door) and .../webhook/ (Flask view) answer alike."""
    body = se.render(
        se.event(
            "invoice.payment_failed",
            {"id": "in_1", "object": "invoice"},
            created=1_700_000_000,
            api_version=se.BASIL_API_VERSION,
        )
    )
    bad = {"Stripe-Signature": se.sign(body, "whsec_not_ours")}
    fast = _answer(client, WEBHOOK, body, **bad)
    flask = _answer(client, WEBHOOK + "/", body, **bad)
    assert fast[:2] == flask[:2]
    assert fast[0] == 400
    assert fast[1]["error"] == "INVALID_SIGNATURE"
    for headers in (fast[2], flask[2]):
        assert headers["Content-Type"] == "application/json"
        assert len(headers["X-Request-ID"]) == 32


def test_request_id_is_echoed(client: FlaskClient) -> None:
    body = b"{}"
    status, _, headers = _answer(client, WEBHOOK, body, **{"X-Request-ID": "abc-123"})
    assert status == 400
    assert headers["X-Request-ID"] == "abc-123"


def test_other_methods_go_to_flask(client: FlaskClient) -> None:
    response = client.get(WEBHOOK)
    assert response.status_code == 405
    assert response.get_json()["error"] == "METHOD_NOT_ALLOWED"
    assert "POST" in response.headers["Allow"]


def test_body_shorter_than_its_length_is_malformed(client: FlaskClient) -> None:
    body = b'{"id": "evt_1"}'
    response = client.post(
        WEBHOOK,
        data=body,
        headers={"Stripe-Signature": se.sign_bytes(body, WEBHOOK_SECRET)},
        environ_overrides={"CONTENT_LENGTH": str(len(body) + 10)},
    )
    assert response.status_code == 400
    assert response.get_json()["error"] == "BAD_REQUEST"


class CountingStream(io.BytesIO):
    read_bytes = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.read_bytes += len(data)
        return data


def _raw_post(
    app: Flask, body: bytes, stream_type: type[CountingStream] = CountingStream, **environ: Any
) -> tuple[str, bytes, CountingStream]:
    """POST ``body`` to the webhook straight through the WSGI callable (no test client)."""
    stream = stream_type(body)
    statuses: list[str] = []
    chunks = app.wsgi_app(
        {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": WEBHOOK,
            "SERVER_NAME": "test",
            "SERVER_PORT": "80",
            "wsgi.url_scheme": "http",
            "wsgi.input": stream,
            "HTTP_STRIPE_SIGNATURE": se.sign_bytes(body, WEBHOOK_SECRET),
            **environ,
        },
        lambda status, headers, *exc: statuses.append(status),
    )
    return statuses[0], b"".join(chunks), stream


def test_a_huge_declared_length_is_refused_unread(app: Flask) -> None:
    """Content-Length past the limit and the drain budget: 413 without reading the body."""
    body = b"x" * 100
    limit = app.extensions["nat"].settings.max_webhook_bytes
    status, data, stream = _raw_post(app, body, CONTENT_LENGTH=str(limit + wsgi.DRAIN_BYTES + 1))
    assert status.startswith("413 ")
    assert json.loads(data)["error"] == "PAYLOAD_TOO_LARGE"
    assert stream.read_bytes == 0


def test_a_chunked_body_over_the_limit_is_drained_within_a_budget(app: Flask) -> None:
    """Read (and dropped) up to DRAIN_BYTES so the client gets its 413, never more."""
    body = b"{" + b" " * (3 * wsgi.DRAIN_BYTES) + b"}"
    status, _, stream = _raw_post(app, body, **{"wsgi.input_terminated": True})
    assert status.startswith("413 ")
    limit = app.extensions["nat"].settings.max_webhook_bytes
    assert limit < stream.read_bytes <= limit + 1 + wsgi.DRAIN_BYTES


class ResetStream(CountingStream):
    def read(self, size: int | None = -1) -> bytes:
        raise ConnectionResetError(104, "Connection reset by peer")


def test_a_client_gone_mid_body_is_a_400_not_a_500(app: Flask) -> None:
    status, data, _ = _raw_post(app, b"x" * 100, ResetStream, CONTENT_LENGTH="100")
    assert status.startswith("400 ")
    assert json.loads(data)["error"] == "BAD_REQUEST"
