"""Helpers the tests import: settings, databases, clients, the quota domain, Stripe events.

Fixtures and pytest hooks live in ``tests/conftest.py``; everything a test imports
lives here (importing ``tests.conftest`` is banned by ruff's ``TID251``).
"""

from __future__ import annotations

import multiprocessing
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from flask.testing import FlaskClient
from sqlalchemy import text
from sqlalchemy.engine import make_url
from werkzeug.test import TestResponse

from tests import stripe_events as se
from webhook_service.db import Database

# --------------------------------------------------------------------------- settings

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


# --------------------------------------------------------------------------- databases


def worker_id(request: pytest.FixtureRequest) -> str:
    """The pytest-xdist worker running the test (``main`` without xdist)."""
    return str(getattr(request.config, "workerinput", {}).get("workerid", "main"))


def fresh_postgres_database(name: str) -> str:
    """(Re)create the PostgreSQL database ``name``, empty; its URL."""
    admin = make_url(POSTGRES_URL)
    conninfo = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=3) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin.set(database=name).render_as_string(hide_password=False)


def drop_postgres_database(name: str) -> None:
    admin = make_url(POSTGRES_URL).set(drivername="postgresql")
    conninfo = admin.render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=3) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def scratch_postgres_database(
    request: pytest.FixtureRequest, label: str
) -> tuple[str, Callable[[], None]]:
    """A new, empty PostgreSQL database for one test, and a function that drops it.

    Named after the worker and its process id, so that test sessions running at the same
    time (several people in one checkout) never share it.
    """
    name = f"nat_test_{worker_id(request)}_{os.getpid()}_{label}"
    try:
        url = fresh_postgres_database(name)
    except psycopg.OperationalError as exc:
        unavailable("PostgreSQL", exc)
    admin = make_url(POSTGRES_URL).set(drivername="postgresql")

    def drop() -> None:
        with psycopg.connect(
            admin.render_as_string(hide_password=False), autocommit=True, connect_timeout=3
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return url, drop


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


def sync_tenants(client: FlaskClient, tenants: list[dict[str, Any]]) -> TestResponse:
    """POST a tenant sync with the configured sync key."""
    return client.post(
        "/api/v1/tenants/sync", json={"tenants": tenants}, headers={"X-Sync-Key": SYNC_KEY}
    )


def new_api_key() -> str:
    return "nat_pk_" + secrets.token_hex(16)


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


# --------------------------------------------------------------------------- Stripe events


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


def failing_event(
    tenant_id: str,
    price_id: str = "price_x",
    *,
    customer: str | None = None,
    api_version: str = se.BASIL_API_VERSION,
    note: str | None = None,
) -> dict[str, Any]:
    """An active subscription of ``tenant_id`` on a price no plan sells: it fails.

    ``customer.subscription.updated`` for January 2025 (created a minute in), with the
    tenant in its metadata; the handler fails it with ``UNKNOWN_PRICE <price_id>`` (500)
    while the catalog does not sell ``price_id``. ``note`` adds a ``note`` metadata key
    (the log tests' marker); ``customer`` defaults to a new id.
    """
    start = 1735689600  # 2025-01-01T00:00Z
    metadata = {"tenant_id": tenant_id}
    if note is not None:
        metadata["note"] = note
    return se.subscription_event(
        "customer.subscription.updated",
        sub_id=se.new_id("sub"),
        customer=customer if customer is not None else se.new_id("cus"),
        status="active",
        period_start=start,
        period_end=start + 31 * 86400,
        created=start + 60,
        api_version=api_version,
        price_id=price_id,
        metadata=metadata,
    )


def race_forked(worker: Callable[..., None], args: tuple[Any, ...], count: int) -> int:
    """Fork ``count`` processes running ``worker(*args, start, errors)`` at once (a
    barrier starts them together; each puts its number of failures on ``errors``) and
    return the failures of all of them."""
    context = multiprocessing.get_context("fork")
    start = context.Barrier(count + 1)
    errors = context.Queue()
    processes = [context.Process(target=worker, args=(*args, start, errors)) for _ in range(count)]
    for process in processes:
        process.start()
    start.wait(timeout=30)
    failed = sum(errors.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    return failed
