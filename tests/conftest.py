"""Fixtures: a real database per backend (SQLite file and PostgreSQL), the app, clients.

Every test that takes ``app`` runs twice, once per backend. PostgreSQL is the one at
``TEST_POSTGRES_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``);
each pytest worker gets a database of its own, created fresh and migrated once. When
``CI`` is set an unreachable PostgreSQL or Redis fails the run instead of skipping.

Only fixtures and pytest hooks live here; the functions, constants and classes tests
import live in ``tests/helpers.py`` (importing ``tests.conftest`` is banned).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.engine import make_url
from werkzeug.test import TestResponse

from tests import stripe_events as se
from tests.helpers import (
    BACKENDS,
    REDIS_URL,
    SYNC_KEY,
    WEBHOOK_SECRET,
    Clock,
    drop_postgres_database,
    fresh_postgres_database,
    new_api_key,
    scratch_postgres_database,
    sync_tenants,
    unavailable,
    worker_id,
)
from tests.openapi_check import OpenAPIClient
from tests.stripe_stub import StripeStub, running_stripe_stub
from webhook_service.config import Settings, load_settings
from webhook_service.db import Database
from webhook_service.migrate import upgrade
from webhook_service.models import metadata
from webhook_service.web.app import create_app


@pytest.fixture(scope="session", autouse=True)
def openapi_checked_test_clients() -> Iterator[None]:
    """Check every test client response of a documented endpoint against openapi.json."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Flask, "test_client_class", OpenAPIClient)
        yield


@pytest.fixture
def stripe_stub() -> Iterator[StripeStub]:
    """The local stand-in for Stripe's API (reached through STRIPE_API_BASE)."""
    with running_stripe_stub() as stub:
        yield stub


@pytest.fixture
def redis_db() -> Iterator[redis.Redis]:
    """The Redis database of the rate-limit tests, reachable or skipped (failed in CI)."""
    connection = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        connection.ping()
    except redis.RedisError as exc:
        unavailable("Redis", exc)
    yield connection
    connection.close()


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A migrated, empty database of each backend, one per pytest worker."""
    pg_name = None
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "test.db"
        url = f"sqlite:///{path}"
    else:
        # Named per process too: two pytest runs on one machine never share a database.
        pg_name = f"nat_test_{worker_id(request)}_{os.getpid()}"
        try:
            url = fresh_postgres_database(pg_name)
        except psycopg.OperationalError as exc:
            unavailable("PostgreSQL", exc)
    database = Database(url, pool=False)
    upgrade(database)
    database.dispose()
    yield url
    if pg_name is not None:
        drop_postgres_database(pg_name)


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """The backend's database, emptied before the test."""
    db = Database(database_url)
    with db.transaction(write=True) as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())
    yield db
    db.dispose()


@pytest.fixture
def env(database: Database) -> dict[str, str]:
    """The environment the app under test is configured from; tests may change it."""
    return {
        "DATABASE_URL": database.url,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "NAT_APP_SYNC_KEY": SYNC_KEY,
        "LOG_FORMAT": "json",
    }


@pytest.fixture
def settings(env: dict[str, str]) -> Settings:
    return load_settings(env)


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    application = create_app(settings)
    application.config["TESTING"] = True
    yield application
    application.extensions["nat"].database.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A CLI runner whose environment is the app's (and no stray .env)."""
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith(("STRIPE_", "NAT_", "DATABASE_URL", "RATE")):
            monkeypatch.delenv(key)
    return CliRunner(env=env)


@pytest.fixture
def post_event(client: FlaskClient) -> Callable[..., TestResponse]:
    """POST an event (dict or raw bytes) signed the way Stripe signs it."""

    def post(
        event: dict[str, Any] | bytes,
        *,
        secret: str = WEBHOOK_SECRET,
        timestamp: int | None = None,
        header: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> TestResponse:
        body = event if isinstance(event, bytes) else se.render(event)
        signature = header if header is not None else se.sign(body, secret, timestamp)
        return client.post(
            "/api/v1/billing/webhook",
            data=body,
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "Stripe-Signature": signature,
                **(headers or {}),
            },
        )

    return post


# --------------------------------------------------------------------------- quota domain
# Shared by the quota tests (test_lifecycle, test_ordering, test_usage, test_sync, ...).


@pytest.fixture
def clock(app: Flask) -> Clock:
    """Put the app's quota service and event log on a settable clock (2025-01-01T12:00Z)."""
    fixed = Clock(datetime(2025, 1, 1, 12, tzinfo=UTC))
    services = app.extensions["nat"]
    services.quotas.clock = fixed
    services.event_log.clock = fixed
    return fixed


@pytest.fixture
def make_tenant(client: FlaskClient) -> Callable[..., str]:
    """Sync a tenant with a fresh API key (and optionally its customer); return the key."""

    def make(tenant_id: str, *, customer: str | None = None) -> str:
        key = new_api_key()
        entry: dict[str, Any] = {"tenant_id": tenant_id, "api_keys": [key]}
        if customer is not None:
            entry["stripe_customer_id"] = customer
        response = sync_tenants(client, [entry])
        assert response.status_code == 200, response.json
        return key

    return make


# --------------------------------------------------------------------------- receiver
# Shared by the receiver's tests (test_webhook_*, test_eventlog*, test_ops, test_cli, ...).


@pytest.fixture
def make_app(env: dict[str, str]) -> Iterator[Callable[..., Flask]]:
    """Build another app on the test's database with some settings changed (None unsets)."""
    built: list[Flask] = []

    def make(**overrides: str | None) -> Flask:
        values = {k: v for k, v in {**env, **overrides}.items() if v is not None}
        application = create_app(load_settings(values))
        application.config["TESTING"] = True
        built.append(application)
        return application

    yield make
    for application in built:
        application.extensions["nat"].database.dispose()


@pytest.fixture
def empty_database_url(
    database_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A database of the same backend that exists but was never migrated."""
    if make_url(database_url).get_backend_name() == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    url, drop = scratch_postgres_database(request, "empty")
    yield url
    drop()
