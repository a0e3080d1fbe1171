"""Fixtures: a real database per backend (SQLite file and PostgreSQL), the app, clients.

Every test that takes ``app`` runs twice, once per backend. PostgreSQL is the one at
``TEST_POSTGRES_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``);
each pytest worker gets a database of its own, created fresh and migrated once. When
``CI`` is set an unreachable PostgreSQL or Redis fails the run instead of skipping.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text
from sqlalchemy.engine import make_url
from werkzeug.test import TestResponse

from tests import stripe_events as se
from webhook_service.app import create_app
from webhook_service.config import Settings, load_settings
from webhook_service.db import Database
from webhook_service.migrate import upgrade
from webhook_service.models import metadata

WEBHOOK_SECRET = "whsec_test_primary_0123456789abcdef0123"
SECOND_SECRET = "whsec_test_rolled_fedcba9876543210fedc"
SYNC_KEY = "sync_test_key_5f0c1d2e3a4b"
POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
IN_CI = bool(os.environ.get("CI"))
BACKENDS = ("sqlite", "postgresql")


def unavailable(what: str, error: Exception) -> None:
    """Skip locally, fail in CI: CI must never pass by skipping a backend."""
    message = f"{what} is not reachable: {error}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _worker_id(request: pytest.FixtureRequest) -> str:
    return str(getattr(request.config, "workerinput", {}).get("workerid", "main"))


def _fresh_postgres_database(name: str) -> str:
    admin = make_url(POSTGRES_URL)
    conninfo = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=3) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin.set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated, empty database of each backend, one per pytest worker."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "test.db"
        url = f"sqlite:///{path}"
    else:
        try:
            url = _fresh_postgres_database(f"nat_test_{_worker_id(request)}")
        except psycopg.OperationalError as exc:
            unavailable("PostgreSQL", exc)
    database = Database(url, pool=False)
    upgrade(database)
    database.dispose()
    return url


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
