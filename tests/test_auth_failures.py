"""Failed authentications are counted per client address (issue 11, item 2).

Before, each presented X-API-Key had its own rate-limit bucket (so guessing keys was
never limited, and every guess cost a database lookup) and failed X-Sync-Key attempts
had no limit at all. Now past RATE_LIMIT failures in a window, the address is answered
429 RATE_LIMITED (exact body, Retry-After) before any lookup, in the rate limit's
storage (memory or Redis); keys that authenticated recently still get through, so other
tenants behind the same address are not starved.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.helpers import REDIS_URL, SYNC_KEY, new_api_key
from tests.test_ratelimit import assert_rate_limited
from webhook_service.config import load_settings
from webhook_service.web.app import create_app

LIMIT = 10
ATTACKER = "203.0.113.66"


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "RATE_LIMIT": f"{LIMIT}/minute"}


def usage(client: FlaskClient, key: str, address: str = ATTACKER) -> TestResponse:
    return client.get(
        "/api/v1/usage", headers={"X-API-Key": key}, environ_base={"REMOTE_ADDR": address}
    )


def sync(client: FlaskClient, sync_key: str, address: str = ATTACKER) -> TestResponse:
    return client.post(
        "/api/v1/tenants/sync",
        json={"tenants": []},
        headers={"X-Sync-Key": sync_key},
        environ_base={"REMOTE_ADDR": address},
    )


def test_guessing_api_keys_is_limited_per_address(client: FlaskClient) -> None:
    """Answer 401 to the first RATE_LIMIT guesses of an address, then 429 with Retry-After."""
    statuses = [usage(client, new_api_key()).status_code for _ in range(100)]
    assert statuses[:LIMIT] == [401] * LIMIT
    assert statuses[LIMIT:] == [429] * (100 - LIMIT)
    assert_rate_limited(usage(client, new_api_key()))
    # A request without a key is refused too (every kind of failure counts).
    assert_rate_limited(client.get("/api/v1/usage", environ_base={"REMOTE_ADDR": ATTACKER}))
    # Another address is not affected.
    assert usage(client, new_api_key(), "198.51.100.7").status_code == 401


def test_a_refused_guess_costs_no_database_lookup(
    client: FlaskClient, app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refuse guesses past the limit before the key is looked up."""
    for _ in range(LIMIT):
        assert usage(client, new_api_key()).status_code == 401
    quotas = app.extensions["nat"].quotas
    lookups: list[str | None] = []
    real = quotas.usage_for_key

    def counting(api_key: str | None) -> object:
        lookups.append(api_key)
        return real(api_key)

    monkeypatch.setattr(quotas, "usage_for_key", counting)
    for _ in range(20):
        assert usage(client, new_api_key()).status_code == 429
    assert lookups == []


def test_sync_key_guesses_are_limited(client: FlaskClient) -> None:
    """Count wrong X-Sync-Key attempts per address like wrong API keys."""
    statuses = [sync(client, f"wrong-sync-key-{n}").status_code for n in range(30)]
    assert statuses == [401] * LIMIT + [429] * (30 - LIMIT)
    assert_rate_limited(sync(client, "wrong-again"))


def test_valid_keys_behind_the_same_address_are_not_starved(
    client: FlaskClient, make_tenant: Callable[..., str]
) -> None:
    """Serve tenants that authenticated before, from the blocked address; refuse guesses."""
    tenant_key = make_tenant("tnt_behind_nat")
    assert usage(client, tenant_key).status_code == 200
    assert sync(client, SYNC_KEY).status_code == 200
    for _ in range(LIMIT + 5):
        usage(client, new_api_key())
        sync(client, "wrong-sync-key")
    assert_rate_limited(usage(client, new_api_key()))
    assert usage(client, tenant_key).status_code == 200
    assert sync(client, SYNC_KEY).status_code == 200
    # A key that was revoked since is refused (and counted) as any wrong key.
    response = client.post(
        "/api/v1/tenants/sync",
        json={"tenants": [{"tenant_id": "tnt_behind_nat", "api_keys": []}]},
        headers={"X-Sync-Key": SYNC_KEY},
    )
    assert response.status_code == 200
    assert usage(client, tenant_key).status_code == 401


def test_the_address_is_the_client_behind_trusted_proxies(env: dict[str, str]) -> None:
    """Count per X-Forwarded-For client with TRUSTED_PROXY_HOPS=1, not per load balancer."""
    app = create_app(load_settings({**env, "TRUSTED_PROXY_HOPS": "1"}))
    try:
        client = app.test_client()

        def guess(forwarded_for: str) -> int:
            response = client.get(
                "/api/v1/usage",
                headers={"X-API-Key": new_api_key(), "X-Forwarded-For": forwarded_for},
                environ_base={"REMOTE_ADDR": "10.0.0.1"},
            )
            return response.status_code

        assert [guess("192.0.2.1") for _ in range(LIMIT + 1)] == [401] * LIMIT + [429]
        assert guess("192.0.2.2") == 401
    finally:
        app.extensions["nat"].database.dispose()


@pytest.fixture
def redis_apps(env: dict[str, str], redis_db: redis.Redis) -> Iterator[tuple[Flask, Flask]]:
    """Two instances counting in Redis (this test's own address, forgotten afterwards)."""
    apps = tuple(create_app({**env, "RATELIMIT_STORAGE_URI": REDIS_URL}) for _ in range(2))
    yield apps[0], apps[1]
    for app in apps:
        app.extensions["nat"].database.dispose()
    for name in redis_db.scan_iter(match="*addr:203.0.113.99*"):
        redis_db.delete(name)


def test_failures_are_counted_in_redis_across_instances(
    redis_apps: tuple[Flask, Flask], redis_db: redis.Redis
) -> None:
    """Share the failure count between instances through RATELIMIT_STORAGE_URI."""
    one, other = (app.test_client() for app in redis_apps)
    address = "203.0.113.99"
    statuses = [usage(c, new_api_key(), address).status_code for c in (one, other) * LIMIT]
    assert statuses == [401] * LIMIT + [429] * LIMIT
    assert list(redis_db.scan_iter(match=f"*auth-failures*addr:{address}*")) or list(
        redis_db.scan_iter(match=f"*addr:{address}*auth-failures*")
    )
