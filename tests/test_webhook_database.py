"""The database goes away: the webhook answers 503 quickly and never acknowledges an event.

Each case makes the database really unusable, no mock involved:

* PostgreSQL nobody listens for: ``DATABASE_URL`` on a closed port of 127.0.0.1 (refused).
* PostgreSQL that disappears while the service runs: its database is dropped (``DROP
  DATABASE ... WITH (FORCE)`` also ends the pooled connections).
* SQLite that cannot be opened: ``DATABASE_URL`` names a directory. Tests run as root, for
  whom file permissions do not block anything, but no one can open a directory as a
  database file (``unable to open database file``).
* A database that answers but was never migrated (both backends).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests import stripe_events as se
from tests.helpers import WEBHOOK_SECRET, scratch_postgres_database
from tests.servers import closed_port
from webhook_service.db import Database
from webhook_service.migrate import upgrade
from webhook_service.web.app import create_app

WEBHOOK = "/api/v1/billing/webhook"
FAST_S = 5.0  # well under Stripe's 10 s delivery timeout


def checkout_event() -> dict[str, Any]:
    return se.checkout_completed_event(
        session_id=se.new_id("cs_test"),
        customer=se.new_id("cus"),
        subscription=se.new_id("sub"),
        created=1735689600,
        api_version=se.BASIL_API_VERSION,
        client_reference_id="tnt_gone",
    )


def deliver(client: FlaskClient, event: dict[str, Any]) -> tuple[int, Any, float]:
    body = se.render(event)
    started = time.monotonic()
    response = client.post(
        WEBHOOK, data=body, headers={"Stripe-Signature": se.sign(body, WEBHOOK_SECRET)}
    )
    return response.status_code, response.json, time.monotonic() - started


def assert_unavailable(client: FlaskClient) -> None:
    """503 SERVICE_UNAVAILABLE, fast, for every delivery; /readyz says the database is down."""
    for _ in range(3):
        status, body, elapsed = deliver(client, checkout_event())
        assert status == 503, body
        assert body == {
            "error": "SERVICE_UNAVAILABLE",
            "message": "The database is unavailable. Retry later; nothing was recorded.",
            "status": 503,
        }
        assert elapsed < FAST_S
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json is not None
    assert ready.json["checks"]["database"] != "ok"
    assert client.get("/healthz").status_code == 200  # the process itself is fine


def make(database_url: str) -> Flask:
    app = create_app({"DATABASE_URL": database_url, "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET})
    app.config["TESTING"] = True
    return app


def test_postgres_refusing_connections_answers_503() -> None:
    """Answer 503 when nothing listens where DATABASE_URL points (PostgreSQL)."""
    app = make(f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/nat")
    try:
        assert_unavailable(app.test_client())
    finally:
        app.extensions["nat"].database.dispose()


def test_sqlite_that_cannot_be_opened_answers_503(tmp_path: Path) -> None:
    """Answer 503 when the SQLite database file cannot be opened (the path is a directory)."""
    (tmp_path / "webhook.db").mkdir()
    app = make(f"sqlite:///{tmp_path / 'webhook.db'}")
    try:
        assert_unavailable(app.test_client())
    finally:
        app.extensions["nat"].database.dispose()


@pytest.fixture
def doomed_postgres(request: pytest.FixtureRequest) -> Iterator[tuple[str, Callable[[], None]]]:
    """A migrated PostgreSQL database of this test alone, and a function that drops it."""
    url, drop = scratch_postgres_database(request, "doomed")
    migrated = Database(url, pool=False)
    upgrade(migrated)
    migrated.dispose()
    yield url, drop
    drop()


def test_postgres_dropped_while_serving_answers_503(
    doomed_postgres: tuple[str, Callable[[], None]],
) -> None:
    """Answer 503, never 2xx, once the database disappears under a running service."""
    url, drop = doomed_postgres
    app = make(url)
    client = app.test_client()
    try:
        status, body, _ = deliver(client, checkout_event())
        assert (status, body["outcome"]) == (200, "processed")  # pool warm, connections open
        drop()
        assert_unavailable(client)
    finally:
        app.extensions["nat"].database.dispose()


def test_unmigrated_database_answers_503(empty_database_url: str) -> None:
    """Answer 503 (not 2xx, not a bare 500) when the schema was never created."""
    app = make(empty_database_url)
    client = app.test_client()
    try:
        for _ in range(2):
            status, body, elapsed = deliver(client, checkout_event())
            assert status == 503, body
            assert body["error"] == "SERVICE_UNAVAILABLE"
            assert elapsed < FAST_S
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json is not None
        assert ready.json["checks"]["database"] == "ok"
        assert ready.json["checks"]["migrations"].startswith("at none")
    finally:
        app.extensions["nat"].database.dispose()
