"""Logs: one canonical JSON line per request, and no secret or payload in any line.

The lines are captured as rendered: a handler with the service's own formatter is added
to the root logger the app configured, so what is asserted on is the text an operator
would read (tracebacks included). ``test_webhook_gunicorn`` checks gunicorn's stderr.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import structlog
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests import stripe_events as se
from tests.helpers import SECOND_SECRET, SYNC_KEY, WEBHOOK_SECRET, failing_event
from webhook_service.logging import configure_logging, formatter_for_stdlib

WEBHOOK = "/api/v1/billing/webhook"
JAN_1 = 1735689600


class Captured:
    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line.strip()]

    def requests(self) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("event") == "request"]


@contextmanager
def capture() -> Iterator[Captured]:
    """Everything logged from now on, rendered by the formatter the app configured."""
    root = logging.getLogger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(root.handlers[0].formatter)
    root.addHandler(handler)
    try:
        yield Captured(stream)
    finally:
        root.removeHandler(handler)


RATE_LIMIT = 5


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    """A rate limit small enough to reach (and log) in a test."""
    return {**env, "RATE_LIMIT": f"{RATE_LIMIT}/minute"}


@pytest.fixture
def logs(app: Flask) -> Iterator[Captured]:
    """What the app logs during the test."""
    with capture() as captured:
        yield captured


def checkout(tenant_id: str, **kwargs: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"customer": se.new_id("cus"), **kwargs}
    return se.checkout_completed_event(
        session_id=se.new_id("cs_test"),
        subscription=se.new_id("sub"),
        created=JAN_1,
        api_version=se.BASIL_API_VERSION,
        client_reference_id=tenant_id,
        **options,
    )


def test_one_canonical_line_per_request(
    client: FlaskClient, logs: Captured, post_event: Callable[..., TestResponse]
) -> None:
    """Write exactly one 'request' line per request, with id, route, status and duration."""
    client.get("/readyz", headers={"X-Request-ID": "ready-1"})
    client.get("/nowhere", headers={"X-Request-ID": "missing-1"})
    post_event(b"{}", headers={"X-Request-ID": "payload-1"})
    lines = logs.requests()
    assert [line["request_id"] for line in lines] == ["ready-1", "missing-1", "payload-1"]
    assert [(line["route"], line["status"]) for line in lines] == [
        ("/readyz", 200),
        ("<unmatched>", 404),
        (WEBHOOK, 400),
    ]
    for line in lines:
        assert isinstance(line["duration_ms"], int | float)
        assert line["duration_ms"] >= 0
        assert line["level"] == "info"
        assert line["logger"] == "webhook_service.request"
        assert line["timestamp"].endswith("Z")


def test_webhook_line_names_event_outcome_tenant_and_secret(
    client: FlaskClient, logs: Captured
) -> None:
    """Name the event, its type, the outcome, the tenant and which secret matched."""
    event = checkout("tnt_logged")
    body = se.render(event)
    response = client.post(
        WEBHOOK,
        data=body,
        headers={
            "Stripe-Signature": se.sign(body, WEBHOOK_SECRET),
            "X-Request-ID": "hook-1",
        },
    )
    assert response.status_code == 200
    [line] = logs.requests()
    assert line["request_id"] == "hook-1"
    assert line["event_id"] == event["id"]
    assert line["event_type"] == "checkout.session.completed"
    assert line["outcome"] == "processed"
    assert line["tenant_id"] == "tnt_logged"
    assert line["secret_index"] == 0
    assert line["status"] == 200
    # Every other line of the request carries its id too.
    for other in logs.lines():
        assert other["request_id"] == "hook-1"


def test_second_secret_is_logged_by_position(make_app: Callable[..., Flask]) -> None:
    """Log secret_index 1 when the second configured secret matched, and never the secret."""
    app = make_app(STRIPE_WEBHOOK_SECRET=f"{WEBHOOK_SECRET},{SECOND_SECRET}")
    with capture() as logs:
        body = se.render(checkout("tnt_rolled"))
        response = app.test_client().post(
            WEBHOOK, data=body, headers={"Stripe-Signature": se.sign(body, SECOND_SECRET)}
        )
    assert response.status_code == 200
    [line] = logs.requests()
    assert line["secret_index"] == 1
    assert SECOND_SECRET not in logs.text
    assert WEBHOOK_SECRET not in logs.text


def test_nothing_secret_or_from_a_payload_is_ever_logged(
    client: FlaskClient, logs: Captured, post_event: Callable[..., TestResponse]
) -> None:
    """Log no secret, key or payload text, in successes, rejections, failures and crashes."""
    marker = f"marker{secrets.token_hex(6)}"
    api_key = "nat_pk_" + secrets.token_hex(16)
    tenant = f"tnt_{secrets.token_hex(4)}"  # logged by design; the marker must not be
    customer = se.new_id("cus")
    body = se.render(checkout(tenant, customer=customer, customer_email=f"{marker}@example.com"))

    # Accepted, duplicate, forged, stale signature, not JSON, over a bad header.
    assert post_event(body).status_code == 200
    assert post_event(body).status_code == 200
    assert post_event(body, secret="whsec_forged_forged_forged_000000").status_code == 400
    assert post_event(body, timestamp=JAN_1).status_code == 400
    assert post_event(f'{{"note": "{marker}"}}'.encode()).status_code == 400
    header = f"t=1,v1={marker}"
    assert post_event(body, header=header).status_code == 400
    # A handler that fails (unknown price of the tenant's customer) and one that crashes.
    failing = failing_event(tenant, customer=customer, note=marker)
    assert post_event(failing).status_code == 500
    crashing = se.subscription_event(
        "customer.subscription.updated",
        sub_id=se.new_id("sub"),
        customer=se.new_id("cus"),
        status="active",
        period_start=JAN_1,
        period_end=JAN_1 + 31 * 86400,
        created=JAN_1 + 60,
        api_version=se.BASIL_API_VERSION,
        metadata={"tenant_id": tenant, "note": marker},
    )
    for item in crashing["data"]["object"]["items"]["data"]:
        item["price"]["recurring"]["interval_count"] = 2**70  # a database error in the handler
    assert post_event(crashing).status_code == 500
    # A handler error about a field whose value is the sender's text.
    odd_quantity = se.subscription_event(
        "customer.subscription.updated",
        sub_id=se.new_id("sub"),
        customer=se.new_id("cus"),
        status="active",
        period_start=JAN_1,
        period_end=JAN_1 + 31 * 86400,
        created=JAN_1 + 60,
        api_version=se.BASIL_API_VERSION,
    )
    odd_quantity["data"]["object"]["items"]["data"][0]["quantity"] = marker
    assert post_event(odd_quantity).status_code == 500
    # A field a handler logs, carrying the sender's text instead of a number.
    payment_failed = se.event(
        "invoice.payment_failed",
        {"id": se.new_id("in"), "object": "invoice", "attempt_count": marker},
        created=JAN_1,
        api_version=se.BASIL_API_VERSION,
    )
    assert post_event(payment_failed).status_code == 200
    # Tenant sync and tenant endpoints, with keys right, wrong and in the wrong header.
    sync = {"tenants": [{"tenant_id": tenant, "api_keys": [api_key]}]}
    synced = client.post("/api/v1/tenants/sync", json=sync, headers={"X-Sync-Key": SYNC_KEY})
    assert synced.status_code == 200
    client.post("/api/v1/tenants/sync", json=sync, headers={"X-Sync-Key": SYNC_KEY + "x"})
    client.get("/api/v1/usage", headers={"X-API-Key": api_key})
    client.get("/api/v1/usage", headers={"X-API-Key": api_key + "x"})
    client.get("/api/v1/usage", headers={"Authorization": f"Bearer {api_key}"})
    client.post(
        "/api/v1/usage/scans", json={"count": 1, "note": marker}, headers={"X-API-Key": api_key}
    )
    # Past the rate limit: the rate_limit_exceeded line names the client, not its key's hash.
    for _ in range(RATE_LIMIT):
        client.get("/api/v1/usage", headers={"X-API-Key": api_key})

    text = logs.text
    assert len(logs.requests()) == 16 + RATE_LIMIT
    assert "rate_limit_exceeded" in text
    assert "handler_crashed" in text  # the crash was logged, traceback included
    assert "Traceback" in text
    # Values a crashed statement carried (the database error is logged without them).
    crashed_customer = crashing["data"]["object"]["customer"]
    # The stored hash of the key is as good as the key to whoever can sync.
    key_sha256 = hashlib.sha256(api_key.encode()).hexdigest()
    for secret in (WEBHOOK_SECRET, SYNC_KEY, api_key, marker, crashed_customer, key_sha256):
        assert secret not in text
    assert marker[:8] not in text
    for fragment in ("whsec_", "nat_pk_", "Bearer", "sync_test_key", '"object": "event"'):
        assert fragment not in text


def test_redaction_of_sensitive_keys(app: Flask, logs: Captured) -> None:
    """Redact values logged under a sensitive key, whoever logs them."""
    log = structlog.get_logger("tests.redaction")
    log.warning("oops", api_key="nat_pk_leaked", secret="whsec_leaked", body="raw body")
    logging.getLogger("tests.stdlib").warning("stdlib line %s", "ok")
    lines = logs.lines()
    assert lines[0]["api_key"] == lines[0]["secret"] == lines[0]["body"] == "[redacted]"
    assert lines[1]["event"] == "stdlib line ok"
    assert lines[1]["logger"] == "tests.stdlib"
    assert "leaked" not in logs.text


def test_console_format_is_for_humans() -> None:
    """Render plain text (not JSON) with LOG_FORMAT=console; restore JSON afterwards."""
    stream = io.StringIO()
    try:
        configure_logging("console", "info")
        root = logging.getLogger()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(root.handlers[0].formatter)
        root.addHandler(handler)
        structlog.get_logger("tests.console").info("hello_console", sync_key="s3cr3t")
        root.removeHandler(handler)
    finally:
        configure_logging("json", "info")
    text = stream.getvalue()
    assert "hello_console" in text
    assert "s3cr3t" not in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


def test_gunicorn_formatter_renders_json() -> None:
    """Format gunicorn's own records (stdlib) as the same JSON lines."""
    formatter = formatter_for_stdlib("json")
    record = logging.LogRecord(
        "gunicorn.error", logging.INFO, __file__, 1, "Booting worker with pid: %s", (42,), None
    )
    line = json.loads(formatter.format(record))
    assert line["event"] == "Booting worker with pid: 42"
    assert line["level"] == "info"
    assert line["logger"] == "gunicorn.error"
    assert "timestamp" in line
