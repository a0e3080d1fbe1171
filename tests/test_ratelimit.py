"""RATE_LIMIT on tenant endpoints: per API key, exact 429, shared through Redis."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.helpers import (
    REDIS_URL,
    Subscription,
    count_rows,
    new_api_key,
    sync_tenants,
    utc,
)
from webhook_service.db import Database
from webhook_service.web.app import create_app

JAN = (utc(2025, 1, 1), utc(2025, 2, 1))


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    """Three requests a minute per key: small enough to reach in a test."""
    return {**env, "RATE_LIMIT": "3/minute"}


def assert_rate_limited(response: TestResponse) -> int:
    """Check the exact 429 body against its own Retry-After; return that number."""
    assert response.status_code == 429
    retry_after = int(response.headers["Retry-After"])
    # At most the 60 s window, plus the second flask-limiter adds to a reset time
    # (Redis keeps whole-second TTLs) so that a client never comes back too early.
    assert 1 <= retry_after <= 61
    assert response.json == {
        "error": "RATE_LIMITED",
        "message": f"Too many requests. Please slow down and retry after {retry_after} seconds.",
        "retry_after": retry_after,
        "status": 429,
    }
    return retry_after


def usage(client: FlaskClient, key: str) -> TestResponse:
    return client.get("/api/v1/usage", headers={"X-API-Key": key})


def test_fourth_request_in_a_minute_is_429(
    client: FlaskClient, make_tenant: Callable[..., str]
) -> None:
    """Serve three requests of a key, refuse the fourth with the exact body and Retry-After."""
    key = make_tenant("tnt_rl")
    assert [usage(client, key).status_code for _ in range(3)] == [200, 200, 200]
    first = assert_rate_limited(usage(client, key))
    second = assert_rate_limited(usage(client, key))
    assert second <= first


def test_limit_is_per_api_key(client: FlaskClient, make_tenant: Callable[..., str]) -> None:
    """Keep serving another key (even of the same tenant) when one key is limited."""
    noisy = make_tenant("tnt_rl_noisy")
    quiet = make_tenant("tnt_rl_quiet")
    second_key = new_api_key()
    sync_tenants(client, [{"tenant_id": "tnt_rl_noisy", "api_keys": [noisy, second_key]}])
    for _ in range(3):
        assert usage(client, noisy).status_code == 200
    assert_rate_limited(usage(client, noisy))
    assert usage(client, quiet).status_code == 200
    assert usage(client, second_key).status_code == 200


def test_spends_are_limited_and_a_refused_request_spends_nothing(
    client: FlaskClient, make_tenant: Callable[..., str], database: Database
) -> None:
    """Refuse the fourth spend with 429 before it spends anything."""
    key = make_tenant("tnt_rl_spend")
    for expected_used in (1, 2, 3):
        response = client.post("/api/v1/usage/scans", headers={"X-API-Key": key})
        assert response.json["scans_used"] == expected_used
    for _ in range(2):
        assert_rate_limited(client.post("/api/v1/usage/scans", headers={"X-API-Key": key}))
    assert count_rows(database, "scan_spends", "tenant_id = 'tnt_rl_spend'") == 3


def test_limit_counts_all_tenant_endpoints_of_a_key_together(
    client: FlaskClient, make_tenant: Callable[..., str]
) -> None:
    """Count reads and spends of one key against one budget."""
    key = make_tenant("tnt_rl_mixed")
    assert usage(client, key).status_code == 200
    assert client.post("/api/v1/usage/scans", headers={"X-API-Key": key}).status_code == 200
    assert usage(client, key).status_code == 200
    assert_rate_limited(client.post("/api/v1/usage/scans", headers={"X-API-Key": key}))


def test_webhook_and_sync_are_never_limited(
    client: FlaskClient,
    post_event: Callable[..., TestResponse],
    make_tenant: Callable[..., str],
) -> None:
    """Accept every webhook delivery and sync call, however many, while a key is limited."""
    sub = Subscription()
    key = make_tenant("tnt_rl_hooks", customer=sub.customer)
    for _ in range(4):
        usage(client, key)
    assert_rate_limited(usage(client, key))
    for second in range(8):
        event = sub.event("customer.subscription.updated", "active", JAN, JAN[0] + second)
        response = post_event(event, headers={"X-API-Key": key})
        assert response.status_code == 200
        assert response.json["outcome"] == "processed"
    for _ in range(5):
        assert sync_tenants(client, [{"tenant_id": "tnt_rl_hooks"}]).status_code == 200


# --------------------------------------------------------------------------- shared counts


def forget(connection: redis.Redis, api_key: str) -> None:
    """Delete the counters of ``api_key`` only.

    Not FLUSHDB: pytest-xdist workers (and other suites) share this database, and a
    flush in the middle of another test's count would make that test flaky.
    """
    digest = hashlib.sha256(api_key.encode()).hexdigest()
    for name in connection.scan_iter(match=f"*{digest}*"):
        connection.delete(name)


@pytest.fixture
def two_apps(env: dict[str, str]) -> Iterator[Callable[[str], tuple[Flask, Flask]]]:
    """Two app instances (as on two hosts) on one database, counting in ``storage``."""
    made: list[Flask] = []

    def make(storage: str) -> tuple[Flask, Flask]:
        one, other = (create_app({**env, "RATELIMIT_STORAGE_URI": storage}) for _ in range(2))
        made.extend((one, other))
        return one, other

    yield make
    for app in made:
        app.extensions["nat"].database.dispose()


def test_redis_storage_shares_the_count_between_instances(
    two_apps: Callable[[str], tuple[Flask, Flask]],
    make_tenant: Callable[..., str],
    redis_db: redis.Redis,
) -> None:
    """Refuse the fourth request of a key even when each instance saw only two."""
    key = make_tenant("tnt_rl_redis")
    forget(redis_db, key)
    try:
        one, other = (app.test_client() for app in two_apps(REDIS_URL))
        assert usage(one, key).status_code == 200
        assert usage(other, key).status_code == 200
        assert usage(one, key).status_code == 200
        assert_rate_limited(usage(other, key))
        assert_rate_limited(usage(one, key))
        digest = hashlib.sha256(key.encode()).hexdigest()
        assert list(redis_db.scan_iter(match=f"*{digest}*")), "the count lives in Redis"
    finally:
        forget(redis_db, key)


def test_memory_storage_counts_per_instance(
    two_apps: Callable[[str], tuple[Flask, Flask]], make_tenant: Callable[..., str]
) -> None:
    """Count separately per process with memory:// (the documented default)."""
    key = make_tenant("tnt_rl_memory")
    one, other = (app.test_client() for app in two_apps("memory://"))
    assert [usage(client, key).status_code for client in (one, other) * 3] == [200] * 6
    assert_rate_limited(usage(one, key))
