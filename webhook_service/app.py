"""The application factory. gunicorn loads ``webhook_service.app:create_app()``."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from typing import Any

import structlog
from flask import Flask, Request, Response, g, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.middleware.proxy_fix import ProxyFix

from webhook_service import errors, metrics, ops
from webhook_service.billing import views as billing_views
from webhook_service.billing.stripe_api import StripeGateway
from webhook_service.config import Settings, load_settings
from webhook_service.context import Services
from webhook_service.db import Database
from webhook_service.handlers import build_router
from webhook_service.logging import clear_contextvars, configure_logging
from webhook_service.quotas import views as quota_views
from webhook_service.quotas.service import QuotaService
from webhook_service.tenant_api import init_rate_limit
from webhook_service.webhooks import views as webhook_views
from webhook_service.webhooks.eventlog import EventLog

log = structlog.get_logger("webhook_service.request")

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_UNLOGGED_ROUTES = frozenset({"/healthz", "/metrics"})
# uuid.uuid4().hex without building a UUID: 128 random bits, version 4, RFC 4122 variant.
_UUID4_CLEAR = ~(0xF000 << 64 | 0xC000 << 48)
_UUID4_SET = 0x4000 << 64 | 0x8000 << 48
# Bodies of the non-webhook endpoints (tenant sync is the largest) are bounded too.
MAX_REQUEST_BYTES = 4 * 1024 * 1024


def _new_request_id() -> str:
    """A new request id, formatted as ``uuid.uuid4().hex``."""
    return f"{int.from_bytes(os.urandom(16)) & _UUID4_CLEAR | _UUID4_SET:032x}"


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON, with a body nested too deeply for the parser refused like any bad JSON.

    ``json.loads`` raises RecursionError (not ValueError) on a few thousand nested
    brackets, which ``request.get_json(silent=True)`` would let through as a 500.
    """

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


def create_app(test_config: Settings | Mapping[str, str] | None = None) -> Flask:
    """Create the app from the environment, or from ``test_config`` (settings or an env map)."""
    settings = test_config if isinstance(test_config, Settings) else load_settings(test_config)
    configure_logging(settings.log_format, settings.log_level)

    app = Flask(__name__)
    app.json = JSONProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    # Never answer with a redirect: Stripe counts a 3xx as a failed delivery.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    app.json.sort_keys = False

    database = Database(settings.database_url)
    app.extensions["nat"] = Services(
        settings=settings,
        database=database,
        event_log=EventLog(database, build_router(), settings.catalog),
        quotas=QuotaService(database, settings.catalog),
        stripe=StripeGateway(settings.stripe_api_key, settings.stripe_api_base),
    )

    errors.init_app(app)
    _init_request_logging(app)
    app.register_blueprint(ops.bp)
    app.register_blueprint(webhook_views.bp)
    init_rate_limit(app, quota_views.tenant_bp, billing_views.bp)
    app.register_blueprint(quota_views.tenant_bp)
    app.register_blueprint(quota_views.sync_bp)
    app.register_blueprint(billing_views.bp)

    if settings.trusted_proxy_hops:
        hops = settings.trusted_proxy_hops
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops
        )
    return app


def _init_request_logging(app: Flask) -> None:
    """Bind a request id to every line and write one canonical line per request.

    Runs on every request, so it does little: the request line's logger is resolved
    once, the request counter's children are kept, and the id is read from the environ.
    """
    request_log = log.bind()  # not the module's lazy proxy: no lookup per line
    requests_counted: dict[tuple[str, str, int], Any] = {}

    @app.before_request
    def _start() -> None:
        clear_contextvars()
        # The proxies' objects, looked up once rather than once per attribute.
        req: Request = request._get_current_object()  # type: ignore[attr-defined]
        incoming = req.environ.get("HTTP_X_REQUEST_ID", "")  # req.headers["X-Request-ID"]
        request_id = incoming if _REQUEST_ID_RE.match(incoming) else _new_request_id()
        app_globals = g._get_current_object()
        app_globals.request_id = request_id
        app_globals.started = time.perf_counter()
        structlog.contextvars.bind_contextvars(request_id=request_id)

    @app.after_request
    def _finish(response: Response) -> Response:
        req: Request = request._get_current_object()  # type: ignore[attr-defined]
        app_globals = g._get_current_object()
        request_id = app_globals.get("request_id") or _new_request_id()
        response.headers["X-Request-ID"] = request_id
        started = app_globals.get("started")
        duration_ms = round((time.perf_counter() - started) * 1000, 2) if started else None
        rule = req.url_rule
        route = rule.rule if rule else "<unmatched>"
        method = req.method
        status = response.status_code
        counted = requests_counted.get((route, method, status))
        if counted is None:
            counted = metrics.HTTP_REQUESTS.labels(route, method, str(status))
            requests_counted[route, method, status] = counted
        counted.inc()
        if route not in _UNLOGGED_ROUTES:
            request_log.info(
                "request",
                request_id=request_id,
                method=method,
                route=route,
                status=status,
                duration_ms=duration_ms,
                remote_addr=req.remote_addr,
            )
        clear_contextvars()
        return response
