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

import math
import threading
import time
from collections.abc import Callable

import structlog
from limits import RateLimitItem, parse
from limits.errors import ConfigurationError
from limits.storage import Storage, storage_from_string

log = structlog.get_logger(__name__)

# How often FixedWindowMemoryStorage drops the windows that ended; each key is also
# expired when it is next counted, so this only bounds the memory of keys not seen again.
SWEEP_INTERVAL_S = 10.0
# While the storage is down, check it again after 1, 2, 4 ... 32 s, then from 1 s again
# (flask-limiter's schedule: MAX_BACKEND_CHECKS = 5).
MAX_BACKOFF_EXPONENT = 5


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
    """The storage of ``RATELIMIT_STORAGE_URI``: a timer-free one for memory://."""
    if storage_uri.startswith("memory://"):
        return FixedWindowMemoryStorage()
    storage = storage_from_string(storage_uri)
    if not isinstance(storage, Storage):  # an async+ scheme: the app is synchronous
        raise ConfigurationError(f"not a synchronous rate limit storage: {storage_uri!r}")
    return storage


class FixedWindowLimit:
    """One ``limits`` item, counted per bucket in a fixed window, with an in-memory fallback.

    ``hit(bucket)`` counts one request and answers ``None`` (allowed) or the Retry-After
    seconds of a refusal. If the storage fails (Redis down), the count moves to a
    per-process memory storage at once and the storage is pinged again, with an
    exponential backoff, by later requests until it answers: an outage of the storage
    never fails a request, which is still limited (per process) meanwhile.
    """

    def __init__(
        self,
        rate_limit: str | RateLimitItem,
        storage: Storage,
        *,
        key_prefix: str,
        scope: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.item = parse(rate_limit) if isinstance(rate_limit, str) else rate_limit
        self.storage = storage
        self.fallback = FixedWindowMemoryStorage(clock=clock)
        # The key flask-limiter counted in, ``item.key_for(key_prefix, bucket, scope)``
        # (LIMITER/nat/<bucket>/tenant-api/120/1/minute), split once around the bucket.
        marker = "\x00"
        template = self.item.key_for(key_prefix, marker, scope)
        self._key_head, self._key_tail = template.split(marker)
        self._amount = self.item.amount
        self._expiry = self.item.get_expiry()
        self._clock = clock
        self.storage_dead = False
        self._checks = 0
        self._last_check = clock()

    def key_for(self, bucket: str) -> str:
        """The storage key of ``bucket``."""
        return f"{self._key_head}{bucket}{self._key_tail}"

    def hit(self, bucket: str) -> int | None:
        """Count a request of ``bucket``: None if allowed, else its Retry-After in seconds."""
        key = self.key_for(bucket)
        if self.storage_dead:
            self._try_to_recover()
        if not self.storage_dead:
            try:
                return self._count(self.storage, key, bucket)
            except Exception as exc:
                log.warning(
                    "rate_limit_storage_unreachable",
                    error=type(exc).__name__,
                    detail="counting in memory until it answers again",
                )
                self.storage_dead = True
                self._checks, self._last_check = 0, self._clock()
        return self._count(self.fallback, key, bucket)

    def _count(self, storage: Storage, key: str, bucket: str) -> int | None:
        if storage.incr(key, self._expiry) <= self._amount:
            return None
        log.info("rate_limit_exceeded", limit=str(self.item), bucket=bucket)
        try:
            reset = storage.get_expiry(key)
        except Exception:  # the storage went away since the incr: the whole window
            reset = self._clock() + self._expiry
        # One second past the window's end, like flask-limiter's RequestLimit.reset_at
        # (Redis keeps whole-second TTLs), so that a client never comes back too early.
        return max(1, math.ceil(int(reset + 1) - self._clock()))

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
            self.storage_dead = False
            self._checks = 0
