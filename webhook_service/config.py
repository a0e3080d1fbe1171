"""Settings: the one place that reads the environment.

Everything the service can be told comes through :func:`load_settings`, which
validates it once and returns a frozen :class:`Settings`. Bad values raise
:class:`ConfigError` with one line naming the variable, so start-up stops with a
message an operator can act on.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from webhook_service.plans import PlanCatalog, PlanCatalogError, load_catalog

DEFAULT_SQLITE_PATH = Path("var") / "webhook-service.db"
LOG_FORMATS = ("json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_RATE_LIMIT_RE = re.compile(
    r"^\s*\d+\s*(/|\s+per\s+)\s*(\d+\s+)?(second|minute|hour|day)s?\s*$", re.IGNORECASE
)


_BIND_HOST_RE = re.compile(r"^[A-Za-z0-9.:%_-]{1,255}\Z")


class ConfigError(Exception):
    """A configuration value that the service cannot start with."""


@dataclass(frozen=True)
class Settings:
    """Validated configuration of one service process."""

    webhook_secrets: tuple[str, ...] = ()
    webhook_tolerance: int = 300
    database_url: str = f"sqlite:///{DEFAULT_SQLITE_PATH}"
    sync_key: str | None = None
    plans_file: str | None = None
    catalog: PlanCatalog = field(default_factory=lambda: load_catalog(None))
    rate_limit: str = "120/minute"
    ratelimit_storage_uri: str = "memory://"
    stripe_api_key: str | None = None
    stripe_api_base: str | None = None
    max_webhook_bytes: int = 1_048_576
    trusted_proxy_hops: int = 0
    log_format: str = "json"
    log_level: str = "info"
    port: int = 8080
    # The address gunicorn binds: every interface in production; `make run` binds 127.0.0.1.
    bind_host: str = "0.0.0.0"  # noqa: S104 - a server's bind address, configurable
    web_concurrency: int = field(default_factory=lambda: default_web_concurrency())
    # One tenant request's Stripe calls, retries included, end within this many seconds;
    # at most this many requests per instance wait on Stripe at once (the rest: 503).
    stripe_deadline_seconds: int = 10
    billing_max_concurrency: int = 16

    def __repr__(self) -> str:
        # Never let a secret reach a log line or a traceback through repr().
        return (
            f"Settings(database={redact_url(self.database_url)!r}, "
            f"webhook_secrets={len(self.webhook_secrets)}, "
            f"sync_key={'set' if self.sync_key else 'unset'}, "
            f"stripe_api_key={'set' if self.stripe_api_key else 'unset'})"
        )

    @property
    def bind_address(self) -> str:
        """``host:port`` as gunicorn takes it (an IPv6 host in brackets)."""
        host = f"[{self.bind_host}]" if ":" in self.bind_host else self.bind_host
        return f"{host}:{self.port}"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def default_web_concurrency() -> int:
    """Two workers per core, at least two: the service waits on the database more than the CPU."""
    return max(2, 2 * (os.cpu_count() or 1))


def default_billing_concurrency(web_concurrency: int) -> int:
    """Four Stripe calls at once per worker: each holds one of a worker's request threads
    (gunicorn_config: 100), so even all of them stalled leave the rest to webhooks, and
    checkouts are rare next to webhooks."""
    return 4 * web_concurrency


def redact_url(url: str) -> str:
    """Render a database URL without its password."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "<unparseable>"
    # libpq also takes the password as a query parameter (?password=...).
    hidden = {key: "***" for key in parsed.query if key.lower() == "password"}
    if hidden:
        parsed = parsed.update_query_dict(hidden)
    return parsed.render_as_string(hide_password=True)


def normalise_database_url(raw: str) -> str:
    """Accept ``postgres://`` and ``postgresql://`` and use the psycopg 3 driver for both."""
    value = raw.strip()
    for prefix in ("postgres://", "postgresql://"):
        if value.startswith(prefix):
            value = "postgresql+psycopg://" + value[len(prefix) :]
            break
    try:
        url: URL = make_url(value)
    except ArgumentError as exc:
        raise ConfigError(f"DATABASE_URL is not a valid database URL: {exc}") from None
    backend = url.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(f"DATABASE_URL must be a sqlite:// or postgresql:// URL, not {backend!r}")
    if backend == "postgresql" and url.get_driver_name() != "psycopg":
        raise ConfigError("DATABASE_URL: only the psycopg (3) PostgreSQL driver is supported")
    if backend == "sqlite":
        _check_sqlite_directory(url.database)
    return value


def _check_sqlite_directory(database: str | None) -> None:
    """A SQLite file's directory must be one, or creatable: no part of it may be a file."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    for parent in Path(database).parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(
                    f"DATABASE_URL: the SQLite file's directory cannot be created: "
                    f"{parent} is not a directory"
                )
            return


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _port(env: Mapping[str, str]) -> int:
    port = _int(env, "PORT", 8080, minimum=1)
    if port > 65535:
        raise ConfigError(f"PORT must be at most 65535, got {port}")
    return port


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, "").strip().lower() or default
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _optional(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the configuration from ``env`` (default: the process environment)."""
    env = os.environ if env is None else env

    secrets = tuple(s.strip() for s in env.get("STRIPE_WEBHOOK_SECRET", "").split(",") if s.strip())
    for index, secret in enumerate(secrets):
        if not secret.startswith("whsec_"):
            raise ConfigError(
                f"STRIPE_WEBHOOK_SECRET: secret #{index} does not start with 'whsec_'"
            )

    raw_tolerance = env.get("STRIPE_WEBHOOK_TOLERANCE", "").strip()
    tolerance = 300
    if raw_tolerance:
        try:
            tolerance = int(raw_tolerance)
        except ValueError:
            raise ConfigError(
                f"STRIPE_WEBHOOK_TOLERANCE must be a positive number of seconds, "
                f"got {raw_tolerance!r}"
            ) from None
        if tolerance <= 0:
            raise ConfigError(
                f"STRIPE_WEBHOOK_TOLERANCE must be a positive number of seconds, got {tolerance}"
            )

    database_url = normalise_database_url(
        env.get("DATABASE_URL", "").strip() or f"sqlite:///{DEFAULT_SQLITE_PATH}"
    )

    plans_file = _optional(env, "NAT_PLANS_FILE")
    try:
        catalog = load_catalog(plans_file)
    except PlanCatalogError as exc:
        raise ConfigError(f"NAT_PLANS_FILE: {exc}") from None

    rate_limit = env.get("RATE_LIMIT", "").strip() or "120/minute"
    if not _RATE_LIMIT_RE.match(rate_limit):
        raise ConfigError(f"RATE_LIMIT must look like '120/minute', got {rate_limit!r}")
    storage = env.get("RATELIMIT_STORAGE_URI", "").strip() or "memory://"
    if not storage.startswith(("memory://", "redis://", "rediss://", "redis+unix://")):
        raise ConfigError(
            f"RATELIMIT_STORAGE_URI must be memory:// or a redis:// URL, got "
            f"{storage.split('://', 1)[0]!r}"
        )

    api_base = _optional(env, "STRIPE_API_BASE")
    if api_base and not api_base.startswith(("http://", "https://")):
        raise ConfigError("STRIPE_API_BASE must be an http:// or https:// URL")

    bind_host = env.get("BIND_HOST", "").strip() or "0.0.0.0"  # noqa: S104 - see Settings
    if not _BIND_HOST_RE.match(bind_host):
        raise ConfigError(f"BIND_HOST must be an IP address or a host name, got {bind_host!r}")

    web_concurrency = _int(env, "WEB_CONCURRENCY", default_web_concurrency(), minimum=1)
    return Settings(
        webhook_secrets=secrets,
        webhook_tolerance=tolerance,
        database_url=database_url,
        sync_key=_optional(env, "NAT_APP_SYNC_KEY"),
        plans_file=plans_file,
        catalog=catalog,
        rate_limit=rate_limit,
        ratelimit_storage_uri=storage,
        stripe_api_key=_optional(env, "STRIPE_API_KEY"),
        stripe_api_base=api_base.rstrip("/") if api_base else None,
        max_webhook_bytes=_int(env, "MAX_WEBHOOK_BYTES", 1_048_576, minimum=1024),
        trusted_proxy_hops=_int(env, "TRUSTED_PROXY_HOPS", 0, minimum=0),
        log_format=_choice(env, "LOG_FORMAT", "json", LOG_FORMATS),
        log_level=_choice(env, "LOG_LEVEL", "info", LOG_LEVELS),
        port=_port(env),
        bind_host=bind_host,
        web_concurrency=web_concurrency,
        stripe_deadline_seconds=_int(env, "STRIPE_DEADLINE_SECONDS", 10, minimum=1),
        billing_max_concurrency=_int(
            env, "BILLING_MAX_CONCURRENCY", default_billing_concurrency(web_concurrency), minimum=1
        ),
    )
