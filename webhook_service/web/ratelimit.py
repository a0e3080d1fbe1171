"""RATE_LIMIT on the tenant endpoints: one fixed window per bucket, counted with ``limits``.

This is what flask-limiter did for the service (a shared limit on the tenant blueprints,
``strategy="fixed-window"``, ``key_prefix="nat"``, ``swallow_errors`` and the in-memory
fallback), without its per-request machinery: the limit is parsed once, the storage key
is built from the same ``limits`` key layout (so Redis counters are the ones flask-limiter
kept), and a request costs one ``incr`` on the storage.

For ``memory://`` the counters live in :class:`FixedWindowMemoryStorage` rather than
``limits``' ``MemoryStorage``, which starts a ``threading.Timer`` to expire its keys on
every hit that comes 10 ms or more after the last timer started: under a sync gunicorn
worker, a thread start for nearly every request.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import structlog
from limits import RateLimitItem, parse
from limits.errors import ConfigurationError
from limits.storage import Storage, storage_from_string

from webhook_service import metrics

log = structlog.get_logger(__name__)
T = TypeVar("T")

# How often FixedWindowMemoryStorage drops the windows that ended; each key is also
# expired when it is next counted, so this only bounds the memory of keys not seen again.
SWEEP_INTERVAL_S = 10.0
# While the storage is down, check it again after 1, 2, 4 ... 32 s, then from 1 s again
# (flask-limiter's schedule: MAX_BACKEND_CHECKS = 5).
MAX_BACKOFF_EXPONENT = 5
# Deadlines of a Redis storage (seconds): well under a request's budget, well over a
# healthy round trip on a network (< 1 ms in the same zone).
REDIS_CONNECT_TIMEOUT_S = 0.25
REDIS_READ_TIMEOUT_S = 0.25


class _Window:
    __slots__ = ("count", "expires_at")

    def __init__(self, count: int, expires_at: float) -> None:
        self.count = count
        self.expires_at = expires_at


class FixedWindowMemoryStorage(Storage):
    """A per-process ``limits`` storage for the fixed-window strategy, without a timer thread.

    Counts like ``limits.storage.MemoryStorage``: a key's window starts at its first
    ``incr`` and lasts ``expiry`` seconds, after which the key counts from zero again.
    Ended windows are dropped lazily (on the key's next use) and by a sweep at most every
    ``SWEEP_INTERVAL_S``, run by whichever ``incr`` comes due: no thread is ever started.
    Only what the fixed window needs is implemented (no moving or sliding window).
    """

    STORAGE_SCHEME = None  # not registered for a URI scheme: memory:// stays limits' own

    def __init__(
        self,
        uri: str | None = None,
        wrap_exceptions: bool = False,
        *,
        clock: Callable[[], float] = time.time,
        **options: float | str | bool,
    ) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()
        self._next_sweep = clock() + SWEEP_INTERVAL_S

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return ValueError

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = self._clock()
        with self._lock:
            if now >= self._next_sweep:
                self._sweep(now)
            window = self._windows.get(key)
            if window is None or window.expires_at <= now:
                self._windows[key] = _Window(amount, now + expiry)
                return amount
            window.count += amount
            return window.count

    def get(self, key: str) -> int:
        window = self._windows.get(key)
        if window is None or window.expires_at <= self._clock():
            return 0
        return window.count

    def get_expiry(self, key: str) -> float:
        now = self._clock()
        window = self._windows.get(key)
        if window is None or window.expires_at <= now:
            return now
        return window.expires_at

    def check(self) -> bool:
        return True

    def reset(self) -> int | None:
        with self._lock:
            count = len(self._windows)
            self._windows.clear()
        return count

    def clear(self, key: str) -> None:
        with self._lock:
            self._windows.pop(key, None)

    @property
    def key_count(self) -> int:
        """How many keys are held (windows that ended included, until they are swept)."""
        return len(self._windows)

    def _sweep(self, now: float) -> None:
        """Drop every ended window (called with the lock held)."""
        self._windows = {k: w for k, w in self._windows.items() if w.expires_at > now}
        self._next_sweep = now + SWEEP_INTERVAL_S


def make_storage(storage_uri: str) -> Storage:
    """The storage of ``RATELIMIT_STORAGE_URI``: a timer-free one for memory://.

    A Redis storage gets short connect and read deadlines: ``limits`` hands Redis a
    client without socket timeouts, so a Redis that stops answering (a full network
    buffer, a paused host) held each request until the worker was killed. Past the
    deadline a call fails like a refused connection, and the limit counts in memory.
    """
    if storage_uri.startswith("memory://"):
        return FixedWindowMemoryStorage()
    options: dict[str, float | str | bool] = {}
    if storage_uri.startswith(("redis://", "rediss://", "redis+unix://")):
        options = {
            "socket_connect_timeout": REDIS_CONNECT_TIMEOUT_S,
            "socket_timeout": REDIS_READ_TIMEOUT_S,
        }
    storage = storage_from_string(storage_uri, **options)
    if not isinstance(storage, Storage):  # an async+ scheme: the app is synchronous
        scheme = storage_uri.partition("://")[0]  # never the rest: it may hold a password
        raise ConfigurationError(f"not a synchronous rate limit storage: {scheme}://")
    return storage


def log_label(bucket: str) -> str:
    """What the log says of a bucket: never the stored SHA-256 of an API key.

    A key's bucket holds the very hash the database keeps (and the sync endpoint takes as
    ``api_key_sha256``). The log gets 12 hex digits of a hash of that hash, under its own
    prefix: enough to follow one client across lines and instances, useless as a key.
    """
    kind, sep, _ = bucket.partition(":")
    if kind == "addr" or not sep:
        return bucket
    digest = hashlib.sha256(f"nat-log-fingerprint\n{bucket}".encode()).hexdigest()
    return f"{kind}:{digest[:12]}"


class GuardedStorage:
    """A ``limits`` storage with a per-process memory fallback, shared by several limits.

    If the storage fails (Redis down, or stalled past its deadline), every limit on it
    counts in the fallback at once, and the storage is pinged again, with an exponential
    backoff, by later requests until it answers: an outage of the storage never fails a
    request, which is still limited (per process) meanwhile.
    """

    def __init__(self, storage: Storage, *, clock: Callable[[], float] = time.time) -> None:
        self.storage = storage
        self.fallback = FixedWindowMemoryStorage(clock=clock)
        self._clock = clock
        self.dead = False
        self.last_error: str | None = None
        self._checks = 0
        self._last_check = clock()

    @property
    def shared(self) -> bool:
        """True if the storage is shared (Redis), not this process's memory."""
        return not isinstance(self.storage, FixedWindowMemoryStorage)

    def use(self, operation: Callable[[Storage], T]) -> T:
        """Run ``operation`` on the storage, or on the fallback while the storage is down."""
        if self.dead:
            self._try_to_recover()
        if not self.dead:
            try:
                return operation(self.storage)
            except Exception as exc:
                self._failed(exc)
        return operation(self.fallback)

    def _failed(self, exc: Exception) -> None:
        log.warning(
            "rate_limit_storage_unreachable",
            error=type(exc).__name__,
            detail="counting in memory until it answers again",
        )
        metrics.RATE_LIMIT_STORAGE_FAILURES.inc()
        metrics.RATE_LIMIT_FALLBACK.set(1)
        self.dead = True
        self.last_error = type(exc).__name__
        self._checks, self._last_check = 0, self._clock()

    def probe(self) -> str:
        """The storage's state for /readyz: "ok", or why this process counts in memory.

        Pings the storage (within its deadline) while it is thought up, so that a stall is
        found by the probe rather than by a tenant's request; while it is down, pings only
        when the backoff allows.
        """
        if not self.dead:
            try:
                alive = self.storage.check()
            except Exception as exc:
                self._failed(exc)
            else:
                if not alive:
                    self._failed(ConnectionError("no answer to PING"))
        else:
            self._try_to_recover()
        if self.dead:
            return (
                f"degraded: storage unreachable ({self.last_error}); "
                "counting per process until it answers"
            )
        return "ok"

    def _try_to_recover(self) -> None:
        """Ping the failed storage once the backoff allows; count in it again if it answers."""
        if self._checks > MAX_BACKOFF_EXPONENT:
            self._checks = 0
        now = self._clock()
        if now - self._last_check <= 2**self._checks:
            return
        self._last_check = now
        self._checks += 1
        try:
            alive = self.storage.check()
        except Exception:
            alive = False
        if alive:
            log.info("rate_limit_storage_recovered")
            metrics.RATE_LIMIT_FALLBACK.set(0)
            self.dead = False
            self._checks = 0


class FixedWindowLimit:
    """One ``limits`` item, counted per bucket in a fixed window, with an in-memory fallback.

    ``hit(bucket)`` counts one request and answers ``None`` (allowed) or the Retry-After
    seconds of a refusal. The storage may be a :class:`GuardedStorage` shared with other
    limits (one outage, one fallback for all), or a plain storage, guarded for this limit.
    """

    def __init__(
        self,
        rate_limit: str | RateLimitItem,
        storage: Storage | GuardedStorage,
        *,
        key_prefix: str,
        scope: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.item = parse(rate_limit) if isinstance(rate_limit, str) else rate_limit
        self.guarded = (
            storage if isinstance(storage, GuardedStorage) else GuardedStorage(storage, clock=clock)
        )
        self.scope = scope
        # The key flask-limiter counted in, ``item.key_for(key_prefix, bucket, scope)``
        # (LIMITER/nat/<bucket>/tenant-api/120/1/minute), split once around the bucket.
        marker = "\x00"
        template = self.item.key_for(key_prefix, marker, scope)
        self._key_head, self._key_tail = template.split(marker)
        self._amount = self.item.amount
        self._expiry = self.item.get_expiry()
        self._clock = clock

    @property
    def storage_dead(self) -> bool:
        """True while the storage is down and this process counts in memory."""
        return self.guarded.dead

    def key_for(self, bucket: str) -> str:
        """The storage key of ``bucket``."""
        return f"{self._key_head}{bucket}{self._key_tail}"

    def hit(self, bucket: str) -> int | None:
        """Count a request of ``bucket``: None if allowed, else its Retry-After in seconds."""
        key = self.key_for(bucket)
        return self.guarded.use(lambda storage: self._count(storage, key, bucket))

    def blocked(self, bucket: str) -> int | None:
        """Retry-After in seconds if ``bucket`` is already past the limit, else None (no count)."""
        key = self.key_for(bucket)

        def peek(storage: Storage) -> int | None:
            if storage.get(key) < self._amount:
                return None
            return self._retry_after(storage, key)

        return self.guarded.use(peek)

    def mark(self, bucket: str) -> None:
        """Count ``bucket`` without judging it: a marker (see :meth:`seen`), not a limit."""
        key = self.key_for(bucket)
        self.guarded.use(lambda storage: storage.incr(key, self._expiry))

    def seen(self, bucket: str) -> bool:
        """True if ``bucket`` was hit in its current window (no count)."""
        key = self.key_for(bucket)
        return self.guarded.use(lambda storage: storage.get(key) > 0)

    def _count(self, storage: Storage, key: str, bucket: str) -> int | None:
        if storage.incr(key, self._expiry) <= self._amount:
            return None
        log.info(
            "rate_limit_exceeded", limit=str(self.item), scope=self.scope, bucket=log_label(bucket)
        )
        return self._retry_after(storage, key)

    def _retry_after(self, storage: Storage, key: str) -> int:
        try:
            reset = storage.get_expiry(key)
        except Exception:  # the storage went away since the incr: the whole window
            reset = self._clock() + self._expiry
        # One second past the window's end, like flask-limiter's RequestLimit.reset_at
        # (Redis keeps whole-second TTLs), so that a client never comes back too early.
        return max(1, math.ceil(int(reset + 1) - self._clock()))
