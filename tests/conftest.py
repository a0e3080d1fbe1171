"""Fixtures: a real database per backend (SQLite file and PostgreSQL), the app, clients.

Every test that takes ``app`` runs twice, once per backend. PostgreSQL is the one at
``TEST_POSTGRES_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``);
each pytest worker gets a database of its own, created fresh and migrated once. When
``CI`` is set an unreachable PostgreSQL or Redis fails the run instead of skipping.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text
from sqlalchemy.engine import make_url
from werkzeug.test import TestResponse

from tests import stripe_events as se
from tests.openapi_check import OpenAPIClient
from tests.stripe_stub import StripeStub, running_stripe_stub
from webhook_service.config import Settings, load_settings
from webhook_service.db import Database
from webhook_service.migrate import upgrade
from webhook_service.models import metadata
from webhook_service.web.app import create_app

WEBHOOK_SECRET = "whsec_test_primary_0123456789abcdef0123"
SECOND_SECRET = "whsec_test_rolled_fedcba9876543210fedc"
SYNC_KEY = "sync_test_key_5f0c1d2e3a4b"
POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def env_flag(value: str | None) -> bool:
    """Is a CI-style flag on? ``CI=false`` (or 0, no, off, empty) is off."""
    return (value or "").strip().lower() not in ("", "0", "false", "no", "off")


IN_CI = env_flag(os.environ.get("CI"))
BACKENDS = ("sqlite", "postgresql")


def unavailable(what: str, error: Exception) -> None:
    """Skip locally, fail in CI: CI must never pass by skipping a backend."""
    message = f"{what} is not reachable: {error}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


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


def _worker_id(request: pytest.FixtureRequest) -> str:
    return str(getattr(request.config, "workerinput", {}).get("workerid", "main"))


def _fresh_postgres_database(name: str) -> str:
    admin = make_url(POSTGRES_URL)
    conninfo = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=3) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin.set(database=name).render_as_string(hide_password=False)


def _drop_postgres_database(name: str) -> None:
    admin = make_url(POSTGRES_URL).set(drivername="postgresql")
    conninfo = admin.render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=3) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
        pg_name = f"nat_test_{_worker_id(request)}_{os.getpid()}"
        try:
            url = _fresh_postgres_database(pg_name)
        except psycopg.OperationalError as exc:
            unavailable("PostgreSQL", exc)
    database = Database(url, pool=False)
    upgrade(database)
    database.dispose()
    yield url
    if pg_name is not None:
        _drop_postgres_database(pg_name)


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


def count_rows(database: Database, table: str, where: str = "1=1", **params: Any) -> int:
    with database.transaction() as conn:
        return int(
            conn.execute(text(f"SELECT count(*) FROM {table} WHERE {where}"), params).scalar_one()  # noqa: S608
        )


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


# --------------------------------------------------------------------------- quota domain
# Shared by the quota tests (test_lifecycle, test_ordering, test_usage, test_sync, ...).


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    """A UTC wall-clock time as the Unix timestamp Stripe puts in its payloads."""
    return int(datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp())


class Clock:
    """A clock the test sets by hand; the app's quota service and event log read it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def set(self, when: datetime | int) -> None:
        self.now = when if isinstance(when, datetime) else datetime.fromtimestamp(when, UTC)


@pytest.fixture
def clock(app: Flask) -> Clock:
    """Put the app's quota service and event log on a settable clock (2025-01-01T12:00Z)."""
    fixed = Clock(datetime(2025, 1, 1, 12, tzinfo=UTC))
    services = app.extensions["nat"]
    services.quotas.clock = fixed
    services.event_log.clock = fixed
    return fixed


def sync_tenants(client: FlaskClient, tenants: list[dict[str, Any]]) -> TestResponse:
    """POST a tenant sync with the configured sync key."""
    return client.post(
        "/api/v1/tenants/sync", json={"tenants": tenants}, headers={"X-Sync-Key": SYNC_KEY}
    )


def new_api_key() -> str:
    return "nat_pk_" + secrets.token_hex(16)


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


def usage_of(client: FlaskClient, api_key: str) -> dict[str, Any]:
    """GET /api/v1/usage as ``api_key``; the body of the 200."""
    response = client.get("/api/v1/usage", headers={"X-API-Key": api_key})
    assert response.status_code == 200, response.json
    body: dict[str, Any] = response.json
    return body


def spend(
    client: FlaskClient, api_key: str, count: int | None = None, idempotency_key: str | None = None
) -> TestResponse:
    """POST /api/v1/usage/scans as ``api_key``."""
    headers = {"X-API-Key": api_key}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    body = None if count is None else {"count": count}
    return client.post("/api/v1/usage/scans", json=body, headers=headers)


@dataclass
class Subscription:
    """Events of one Stripe subscription (stable ids), built with ``tests.stripe_events``."""

    api_version: str = se.BASIL_API_VERSION
    customer: str = field(default_factory=lambda: se.new_id("cus"))
    sub_id: str = field(default_factory=lambda: se.new_id("sub"))
    price_id: str = se.DEFAULT_PRICE_ID
    interval: str = "month"
    metadata: dict[str, str] | None = None

    def event(
        self,
        event_type: str,
        status: str,
        period: tuple[int, int],
        created: int,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """A ``customer.subscription.*`` event for the subscription in this state."""
        options: dict[str, Any] = {
            "api_version": self.api_version,
            "price_id": self.price_id,
            "interval": self.interval,
            "metadata": self.metadata,
            "start_date": kwargs.pop("start_date", period[0]),
        }
        options.update(kwargs)
        return se.subscription_event(
            event_type,
            sub_id=self.sub_id,
            customer=self.customer,
            status=status,
            period_start=period[0],
            period_end=period[1],
            created=created,
            **options,
        )

    def invoice(
        self,
        period: tuple[int, int],
        created: int,
        *,
        event_type: str = "invoice.paid",
        billing_reason: str = "subscription_cycle",
        **kwargs: Any,
    ) -> dict[str, Any]:
        """An invoice event whose subscription line bills ``period``."""
        options: dict[str, Any] = {
            "api_version": self.api_version,
            "price_id": self.price_id,
            "interval": self.interval,
            "subscription_metadata": self.metadata,
        }
        options.update(kwargs)
        return se.invoice_event(
            event_type,
            invoice_id=se.new_id("in"),
            sub_id=self.sub_id,
            customer=self.customer,
            period_start=period[0],
            period_end=period[1],
            created=created,
            billing_reason=billing_reason,
            **options,
        )

    def checkout(self, tenant_id: str | None, created: int, **kwargs: Any) -> dict[str, Any]:
        """``checkout.session.completed`` that opened this subscription for ``tenant_id``."""
        return se.checkout_completed_event(
            session_id=se.new_id("cs_test"),
            customer=self.customer,
            subscription=self.sub_id,
            created=created,
            api_version=self.api_version,
            client_reference_id=tenant_id,
            **kwargs,
        )

    def customer_deleted(self, created: int) -> dict[str, Any]:
        return se.customer_deleted_event(
            customer=self.customer, created=created, api_version=self.api_version
        )


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


def scratch_postgres_database(
    request: pytest.FixtureRequest, label: str
) -> tuple[str, Callable[[], None]]:
    """A new, empty PostgreSQL database for one test, and a function that drops it.

    Named after the worker and its process id, so that test sessions running at the same
    time (several people in one checkout) never share it.
    """
    name = f"nat_test_{_worker_id(request)}_{os.getpid()}_{label}"
    try:
        url = _fresh_postgres_database(name)
    except psycopg.OperationalError as exc:
        unavailable("PostgreSQL", exc)
    admin = make_url(POSTGRES_URL).set(drivername="postgresql")

    def drop() -> None:
        with psycopg.connect(
            admin.render_as_string(hide_password=False), autocommit=True, connect_timeout=3
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return url, drop


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
