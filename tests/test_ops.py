"""Operations endpoints: /healthz (no I/O), /readyz (what is wrong, failed events), /metrics."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests import stripe_events as se
from tests.helpers import WEBHOOK_SECRET, failing_event
from tests.servers import closed_port
from webhook_service.migrate import head_revision
from webhook_service.web.app import create_app


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus exposition ``text`` (0 when absent)."""
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if found == labels:
            return float(match.group(3))
    return 0.0


def test_healthz_answers_without_touching_the_database(tmp_path: Path) -> None:
    """Answer /healthz 200 even when no database can be reached (it does no I/O)."""
    (tmp_path / "db").mkdir()
    for url in (
        f"sqlite:///{tmp_path / 'db'}",
        f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/nat",
    ):
        app = create_app({"DATABASE_URL": url})
        try:
            response = app.test_client().get("/healthz")
            assert response.status_code == 200
            assert response.json == {"status": "ok"}
            assert app.test_client().get("/readyz").status_code == 503
        finally:
            app.extensions["nat"].database.dispose()


def test_readyz_is_ready_when_everything_is(client: FlaskClient) -> None:
    """Answer 200 with every check ok and no failed events."""
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json == {
        "status": "ready",
        "checks": {
            "database": "ok",
            "migrations": "ok",
            "database_writable": "ok",
            "webhook_secret": "ok",
        },
        "failed_events": 0,
        "oldest_failed_event_age_seconds": None,
    }


def test_readyz_reports_failed_events_and_the_oldest_age(
    app: Flask, client: FlaskClient, post_event: Callable[..., TestResponse]
) -> None:
    """Count failed events and give the age of the oldest, while staying ready."""
    event_log = app.extensions["nat"].event_log
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    event_log.clock = lambda: an_hour_ago
    assert post_event(failing_event("tnt_ops_failing", "price_not_in_any_plan")).status_code == 500
    event_log.clock = lambda: datetime.now(UTC)
    assert post_event(failing_event("tnt_ops_failing", "price_not_in_any_plan")).status_code == 500
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.json
    assert body is not None
    assert body["failed_events"] == 2
    assert 3600 <= body["oldest_failed_event_age_seconds"] < 3600 + 120


def test_readyz_lists_everything_that_is_wrong(empty_database_url: str) -> None:
    """Answer 503 naming both the missing secret and the unmigrated schema."""
    app = create_app({"DATABASE_URL": empty_database_url})
    try:
        response = app.test_client().get("/readyz")
    finally:
        app.extensions["nat"].database.dispose()
    assert response.status_code == 503
    body = response.json
    assert body is not None
    assert body["error"] == "NOT_READY"
    assert body["status"] == 503
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["migrations"] == (
        f"at none, expected {head_revision()}; run `webhook-service db upgrade`"
    )
    assert "STRIPE_WEBHOOK_SECRET" in body["checks"]["webhook_secret"]
    assert "migrations" in body["message"]
    assert "webhook_secret" in body["message"]


def test_metrics_count_events_by_type_and_outcome(
    client: FlaskClient, post_event: Callable[..., TestResponse]
) -> None:
    """Expose Prometheus text that counts events, signature failures and requests."""
    event_type = f"test.metrics_{se.new_id('x', 8)[2:].lower()}"
    event = se.event(
        event_type,
        {"id": "obj_1", "object": "thing"},
        created=1735689600,
        api_version=se.BASIL_API_VERSION,
    )
    before = client.get("/metrics").get_data(as_text=True)
    assert post_event(event).status_code == 200
    assert post_event(event).status_code == 200
    assert post_event(event, secret="whsec_wrong_wrong_wrong").status_code == 400
    assert post_event(event, timestamp=int(time.time()) - 3600).status_code == 400

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    assert "# TYPE nat_webhook_events_total counter" in text
    events = "nat_webhook_events_total"
    # A type without a handler is counted as "other" (labels stay a bounded set).
    for outcome in ("ignored", "duplicate"):
        assert metric_value(text, events, outcome=outcome, type="other") == (
            metric_value(before, events, outcome=outcome, type="other") + 1
        )
    assert event_type not in text
    failures = "nat_webhook_signature_failures_total"
    for reason in ("mismatch", "too_old"):
        assert metric_value(text, failures, reason=reason) == (
            metric_value(before, failures, reason=reason) + 1
        )
    assert "nat_webhook_processing_seconds_bucket" in text
    webhook_200 = {"route": "/api/v1/billing/webhook", "method": "POST", "status": "200"}
    assert metric_value(text, "nat_http_requests_total", **webhook_200) >= 2
    matches = metric_value(text, "nat_webhook_secret_matches_total", index="0")
    assert matches >= metric_value(before, "nat_webhook_secret_matches_total", index="0") + 2


def test_metrics_need_no_database(tmp_path: Path) -> None:
    """Serve /metrics while the database is unreachable."""
    (tmp_path / "db").mkdir()
    app = create_app(
        {"DATABASE_URL": f"sqlite:///{tmp_path / 'db'}", "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET}
    )
    try:
        response = app.test_client().get("/metrics")
    finally:
        app.extensions["nat"].database.dispose()
    assert response.status_code == 200
    assert "nat_http_requests_total" in response.get_data(as_text=True)
