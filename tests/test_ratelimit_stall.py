"""A stalled Redis costs tenant requests milliseconds, not the worker (issue 12, item 3).

``limits`` gave its Redis client no socket timeouts: with Redis stalled (connections
open, no byte answered) each tenant request waited until the worker was killed. The
storage now has short connect and read deadlines that count as "storage down": the
limit moves to per-process counting at once, /readyz reports it as a degraded check
(still ready) and /metrics counts it. Redis is stalled by a TCP proxy holding bytes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from tests.helpers import REDIS_URL, wait_for
from tests.tcp_proxy import TcpProxy
from tests.test_ops import metric_value
from webhook_service.web.app import create_app

REDIS_READ_TIMEOUT_S = 0.25  # webhook_service.web.ratelimit's deadline

# Generous: the deadline is REDIS_READ_TIMEOUT_S (0.25 s); before, a request never ended.
SLOWEST_REQUEST_S = 2.0


@pytest.fixture
def stalling_redis(redis_db: redis.Redis) -> Iterator[TcpProxy]:
    """A proxy in front of the test Redis, to hold its bytes."""
    parts = urlsplit(REDIS_URL)
    with TcpProxy((parts.hostname or "127.0.0.1", parts.port or 6379)) as proxy:
        yield proxy


@pytest.fixture
def app_on_proxy(env: dict[str, str], stalling_redis: TcpProxy) -> Iterator[Flask]:
    db = urlsplit(REDIS_URL).path or "/0"
    uri = f"redis://127.0.0.1:{stalling_redis.port}{db}"
    application = create_app({**env, "RATELIMIT_STORAGE_URI": uri, "RATE_LIMIT": "1000/minute"})
    yield application
    application.extensions["nat"].database.dispose()


def timed(call: Callable[[], int]) -> tuple[int, float]:
    started = time.monotonic()
    status = call()
    return status, time.monotonic() - started


def test_a_stalled_redis_falls_back_to_memory_within_its_deadline(
    app_on_proxy: Flask, stalling_redis: TcpProxy, make_tenant: Callable[..., str]
) -> None:
    """Serve tenants at once while Redis holds every byte; report it; go back after."""
    client: FlaskClient = app_on_proxy.test_client()
    key = make_tenant("tnt_stall")

    def usage() -> int:
        return client.get("/api/v1/usage", headers={"X-API-Key": key}).status_code

    assert usage() == 200  # counted in Redis: the pool holds an open connection
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json is not None
    assert ready.json["checks"]["rate_limit_storage"] == "ok"
    before = client.get("/metrics").get_data(as_text=True)

    results: list[tuple[int, float]] = []
    stalled = threading.Thread(
        target=lambda: results.extend(timed(usage) for _ in range(5)), daemon=True
    )
    stalling_redis.hold()
    try:
        stalled.start()
        stalled.join(timeout=3 * SLOWEST_REQUEST_S)
        assert not stalled.is_alive(), f"tenant requests hung on a stalled Redis: {results}"
        assert [status for status, _ in results] == [200] * 5
        assert max(seconds for _, seconds in results) < SLOWEST_REQUEST_S, results
        # Only the first request meets the deadline; the rest count in memory at once.
        assert sum(seconds for _, seconds in results[1:]) < 4 * REDIS_READ_TIMEOUT_S, results

        status, seconds = timed(lambda: client.get("/readyz").status_code)
        ready = client.get("/readyz")
        assert (status, ready.status_code) == (200, 200), ready.json
        assert seconds < SLOWEST_REQUEST_S
        assert ready.json is not None
        assert ready.json["status"] == "ready"
        assert ready.json["checks"]["rate_limit_storage"].startswith("degraded")
        text = client.get("/metrics").get_data(as_text=True)
        assert metric_value(text, "nat_rate_limit_storage_fallback") == 1.0
        failures = "nat_rate_limit_storage_failures_total"
        assert metric_value(text, failures) >= metric_value(before, failures) + 1
    finally:
        stalling_redis.release()

    # Back to Redis once it answers (the first ping comes after a second of backoff).
    def recovered() -> bool:
        answer = client.get("/readyz").json
        return answer is not None and answer["checks"]["rate_limit_storage"] == "ok"

    assert wait_for(recovered, timeout=10.0, interval=0.2)
    text = client.get("/metrics").get_data(as_text=True)
    assert metric_value(text, "nat_rate_limit_storage_fallback") == 0.0
    assert usage() == 200
