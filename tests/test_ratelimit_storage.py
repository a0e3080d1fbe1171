"""webhook_service.web.ratelimit: the fixed window, its memory storage, the fallback on an outage.

The counting is checked against ``limits``' own MemoryStorage and FixedWindowRateLimiter
(what flask-limiter counted with), the Redis keys against flask-limiter's layout, and an
outage of Redis end to end: requests keep being served and limited, counted in memory,
and the count goes back to Redis once it answers again.
"""

from __future__ import annotations

import hashlib
import math
import random
import socket
import threading
import time
import types
from collections.abc import Callable

import pytest
import redis
import structlog
from flask.testing import FlaskClient
from limits import parse
from limits.storage import MemoryStorage, RedisStorage
from limits.strategies import FixedWindowRateLimiter

from tests.helpers import count_rows, spend
from tests.tcp_proxy import TcpProxy
from tests.test_ratelimit import assert_rate_limited, usage
from webhook_service.db import Database
from webhook_service.web import ratelimit
from webhook_service.web.app import create_app
from webhook_service.web.ratelimit import FixedWindowLimit, FixedWindowMemoryStorage, make_storage


class Clock:
    """A settable time.time()."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FlakyStorage(FixedWindowMemoryStorage):
    """A memory storage that fails like an unreachable Redis while ``down``."""

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(clock=clock)
        self.down = False
        self.checks = 0

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        if self.down:
            raise redis.ConnectionError("Connection refused.")
        return super().incr(key, expiry, amount)

    def check(self) -> bool:
        self.checks += 1
        return not self.down


class LogEvents(list[str]):
    """Stands in for the module's logger: the event names logged, in order."""

    def _log(self, event: str, **_: object) -> None:
        self.append(event)

    info = warning = error = exception = _log


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> LogEvents:
    events = LogEvents()
    monkeypatch.setattr(ratelimit, "log", events)
    return events


# --------------------------------------------------------------------------- memory storage


def test_memory_storage_counts_a_window_from_its_first_hit() -> None:
    """Count up within ``expiry`` seconds of a key's first hit, from one again after."""
    clock = Clock()
    storage = FixedWindowMemoryStorage(clock=clock)
    assert [storage.incr("k", 60) for _ in range(3)] == [1, 2, 3]
    assert storage.incr("other", 60) == 1
    assert storage.get("k") == 3
    assert storage.get_expiry("k") == clock.now + 60
    clock.advance(59.75)
    assert storage.incr("k", 60, amount=2) == 5
    clock.advance(0.25)  # the window ends at exactly first hit + expiry
    assert storage.get("k") == 0
    assert storage.get_expiry("k") == clock.now
    assert storage.incr("k", 60) == 1
    assert storage.get_expiry("k") == clock.now + 60


def test_memory_storage_clear_reset_and_check() -> None:
    storage = FixedWindowMemoryStorage()
    storage.incr("a", 60)
    storage.incr("b", 60)
    storage.clear("a")
    assert (storage.get("a"), storage.get("b")) == (0, 1)
    assert storage.check() is True
    assert storage.reset() == 1
    assert storage.key_count == 0


def test_memory_storage_sweeps_ended_windows_and_starts_no_thread() -> None:
    """Drop the windows that ended (keys never seen again) on a later hit, without a thread."""
    clock = Clock()
    storage = FixedWindowMemoryStorage(clock=clock)
    threads = threading.active_count()
    for n in range(1000):
        storage.incr(f"addr:10.0.{n // 256}.{n % 256}", 60)
    storage.incr("long", 3600)
    assert threading.active_count() == threads
    assert storage.key_count == 1001
    clock.advance(61)
    storage.incr("fresh", 60)
    assert storage.key_count == 2  # "long" is still in its window
    assert storage.get("long") == 1
    clock.advance(ratelimit.SWEEP_INTERVAL_S / 2)
    storage.incr("short", 1)
    clock.advance(1)
    storage.incr("fresh", 60)
    assert storage.key_count == 3  # "short" ended, but the next sweep is not due yet
    clock.advance(ratelimit.SWEEP_INTERVAL_S / 2)
    storage.incr("fresh", 60)
    assert storage.key_count == 2


def test_memory_storage_counts_exactly_under_threads() -> None:
    """Lose no count when several threads hit one key at once."""
    storage = FixedWindowMemoryStorage()

    def hit() -> None:
        for _ in range(2000):
            storage.incr("k", 60)

    workers = [threading.Thread(target=hit) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert storage.get("k") == 8000


def test_make_storage_is_timer_free_for_memory_and_limits_redis_otherwise() -> None:
    assert isinstance(make_storage("memory://"), FixedWindowMemoryStorage)
    assert isinstance(make_storage("redis://127.0.0.1:6379/15"), RedisStorage)


# --------------------------------------------------------------------------- the window


@pytest.mark.parametrize(
    ("rate", "key"),
    [
        ("3/minute", "LIMITER/nat/key:ab12/tenant-api/3/1/minute"),
        ("120 per 2 hours", "LIMITER/nat/key:ab12/tenant-api/120/2/hour"),
    ],
)
def test_keys_are_flask_limiters(rate: str, key: str) -> None:
    """Count in the key flask-limiter used (instances old and new share Redis counters)."""
    limit = FixedWindowLimit(rate, FixedWindowMemoryStorage(), key_prefix="nat", scope="tenant-api")
    assert limit.key_for("key:ab12") == key
    assert limit.key_for("addr:10.0.0.1") == parse(rate).key_for(
        "nat", "addr:10.0.0.1", "tenant-api"
    )


def test_hit_allows_the_limit_then_answers_retry_after() -> None:
    """Allow RATE_LIMIT hits per window; then answer the seconds until a second past its end."""
    clock = Clock(1_000_000.0)
    limit = FixedWindowLimit(
        "3/minute", FixedWindowMemoryStorage(clock=clock), key_prefix="nat", scope="s", clock=clock
    )
    assert [limit.hit("key:a") for _ in range(3)] == [None, None, None]
    assert limit.hit("key:a") == 61
    assert limit.hit("key:b") is None
    clock.advance(30.5)
    assert limit.hit("key:a") == 31
    clock.advance(29.25)
    assert limit.hit("key:a") == 2  # 0.25 s left, and the second the reset time adds
    clock.advance(0.25)
    assert limit.hit("key:a") is None


def test_counts_like_limits_fixed_window_over_its_memory_storage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Allow and refuse exactly as limits' FixedWindowRateLimiter on MemoryStorage did."""
    clock = Clock(1_000_000.0)
    monkeypatch.setattr("limits.storage.memory.time", types.SimpleNamespace(time=clock))
    item = parse("3/10 seconds")
    reference = MemoryStorage()
    strategy = FixedWindowRateLimiter(reference)
    limit = FixedWindowLimit(
        item, FixedWindowMemoryStorage(clock=clock), key_prefix="nat", scope="s", clock=clock
    )
    rng = random.Random(7)
    outcomes = []
    for _ in range(3000):
        bucket = f"key:{rng.randrange(4)}"
        clock.advance(rng.choice((0.0, 0.01, 0.25, 0.5, 1.0, 3.0)))
        retry_after = limit.hit(bucket)
        allowed = strategy.hit(item, "nat", bucket, "s")
        assert (retry_after is None) == allowed
        if not allowed:
            # what the 429 handler computed from flask-limiter's RequestLimit.reset_at
            reset_at = int(reference.get_expiry(item.key_for("nat", bucket, "s")) + 1)
            assert retry_after == max(1, math.ceil(reset_at - clock.now))
        outcomes.append(allowed)
    assert 0.2 < outcomes.count(False) / len(outcomes) < 0.8


# --------------------------------------------------------------------------- outage


def test_a_failing_storage_moves_the_count_to_memory_until_it_answers(logged: LogEvents) -> None:
    """Never fail or refuse for the storage; count in memory; go back after the backoff."""
    clock = Clock()
    storage = FlakyStorage(clock)
    limit = FixedWindowLimit("3/minute", storage, key_prefix="nat", scope="s", clock=clock)
    assert limit.hit("key:a") is None
    storage.down = True
    assert [limit.hit("key:a") for _ in range(3)] == [None, None, None]
    assert limit.hit("key:a") == 61  # the memory count, from the outage on
    assert limit.storage_dead
    assert logged == ["rate_limit_storage_unreachable", "rate_limit_exceeded"]
    assert storage.checks == 0  # the first check waits for the backoff

    storage.down = False
    clock.advance(1.0)
    assert limit.hit("key:a") == 60  # not yet: 1 s must have passed, and the count is memory's
    assert storage.checks == 0
    clock.advance(0.1)
    logged.clear()
    assert limit.hit("key:a") is None  # checked, recovered: counted in the storage (2)
    assert storage.checks == 1
    assert not limit.storage_dead
    assert logged == ["rate_limit_storage_recovered"]
    assert storage.get(limit.key_for("key:a")) == 2


def test_the_storage_is_checked_with_an_exponential_backoff() -> None:
    """Ping a storage that stays down after 1, 2, 4, 8, 16, 32 s, then 1 s again."""
    clock = Clock()
    storage = FlakyStorage(clock)
    storage.down = True
    limit = FixedWindowLimit("1000/minute", storage, key_prefix="nat", scope="s", clock=clock)
    start = clock.now
    checked_at = []
    for _ in range(560):
        limit.hit("key:a")
        if storage.checks > len(checked_at):
            checked_at.append(clock.now - start)
        clock.advance(0.125)
    assert checked_at == [1.125, 3.25, 7.375, 15.5, 31.625, 63.75, 64.875, 67.0]
    assert limit.storage_dead


def test_a_storage_lost_after_the_incr_still_gives_a_retry_after() -> None:
    """Answer the whole window when the reset time cannot be read."""
    clock = Clock(1_000_000.0)

    class LosesExpiry(FixedWindowMemoryStorage):
        def get_expiry(self, key: str) -> float:
            raise redis.ConnectionError("gone")

    limit = FixedWindowLimit(
        "1/minute", LosesExpiry(clock=clock), key_prefix="nat", scope="s", clock=clock
    )
    assert limit.hit("key:a") is None
    assert limit.hit("key:a") == 61


# --------------------------------------------------------------------------- in the app


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "RATE_LIMIT": "3/minute"}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_redis_never_stops_scans_and_still_limits(
    env: dict[str, str], make_tenant: Callable[..., str], database: Database
) -> None:
    """Serve spends with Redis unreachable from the start, limited per key in memory."""
    key = make_tenant("tnt_rl_noredis")
    app = create_app({**env, "RATELIMIT_STORAGE_URI": f"redis://127.0.0.1:{closed_port()}/0"})
    try:
        client = app.test_client()
        started = time.monotonic()
        assert [spend(client, key).status_code for _ in range(3)] == [200, 200, 200]
        assert time.monotonic() - started < 5
        assert_rate_limited(spend(client, key))
        assert count_rows(database, "scan_spends", "tenant_id = 'tnt_rl_noredis'") == 3
    finally:
        app.extensions["nat"].database.dispose()


def test_redis_outage_counts_in_memory_then_in_redis_again(
    env: dict[str, str], make_tenant: Callable[..., str], redis_db: redis.Redis
) -> None:
    """Keep serving through an outage of Redis; count in Redis again once it is back."""
    key = make_tenant("tnt_rl_outage")
    digest = hashlib.sha256(key.encode()).hexdigest()
    limit_key = f"LIMITS:LIMITER/nat/key:{digest}/tenant-api/3/1/minute"
    redis_db.delete(limit_key)
    where = redis_db.connection_pool.connection_kwargs
    with TcpProxy((where["host"], int(where["port"]))) as proxy:
        storage = f"redis://127.0.0.1:{proxy.port}/{where['db']}"
        app = create_app({**env, "RATELIMIT_STORAGE_URI": storage})
        try:
            client: FlaskClient = app.test_client()
            assert usage(client, key).status_code == 200
            assert redis_db.get(limit_key) == b"1"

            proxy.cut()
            assert [spend(client, key).status_code for _ in range(3)] == [200, 200, 200]
            assert_rate_limited(usage(client, key))
            assert redis_db.get(limit_key) == b"1"

            proxy.restore()
            time.sleep(1.1)  # the first check of the storage waits a second
            assert usage(client, key).status_code == 200
            assert redis_db.get(limit_key) == b"2"
            assert app.extensions["nat_limiter"].storage_dead is False
        finally:
            app.extensions["nat"].database.dispose()
            redis_db.delete(limit_key)


def test_unrouted_and_other_endpoints_spend_nothing(
    client: FlaskClient, make_tenant: Callable[..., str]
) -> None:
    """Count no 404, 405, health, readiness or metrics request against a key's budget."""
    key = make_tenant("tnt_rl_other")
    headers = {"X-API-Key": key}
    for path in ("/api/v1/usage/scans", "/api/v1/nope", "/healthz", "/readyz", "/metrics"):
        for _ in range(2):
            client.get(path, headers=headers)
    assert [usage(client, key).status_code for _ in range(3)] == [200, 200, 200]
    assert_rate_limited(usage(client, key))


def test_a_marker_counts_without_logging_a_refusal() -> None:
    """Mark a known-good credential again and again: it is seen, and never logged as
    rate limited (a marker is not a limit)."""
    known_good = FixedWindowLimit(
        "1/day", FixedWindowMemoryStorage(), key_prefix="nat", scope="auth-ok"
    )
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            known_good.mark("key:tenant-credential")
    assert known_good.seen("key:tenant-credential")
    assert not known_good.seen("key:another-credential")
    assert [line for line in logs if line["event"] == "rate_limit_exceeded"] == []
