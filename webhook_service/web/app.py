"""The application factory. gunicorn loads ``webhook_service.web.app:create_app()``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, cast

from flask import Flask, Request, Response, g, request
from werkzeug.exceptions import NotFound
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.utils import cached_property
from werkzeug.wsgi import LimitedStream

from webhook_service.config import Settings, load_settings
from webhook_service.logging import configure_logging
from webhook_service.services import build_services
from webhook_service.web import billing as billing_views
from webhook_service.web import errors, ops
from webhook_service.web import quotas as quota_views
from webhook_service.web.requestlog import RequestLog, new_request_id
from webhook_service.web.tenant_api import init_rate_limit
from webhook_service.web.webhook import WEBHOOK_PATH, WebhookEndpoint

# Bodies of the non-webhook endpoints (tenant sync is the largest) are bounded too.
MAX_REQUEST_BYTES = 4 * 1024 * 1024


class ServiceRequest(Request):
    """Flask's request, whose body read short of its Content-Length raises werkzeug's
    ``ClientDisconnected`` under gunicorn too.

    gunicorn sets ``wsgi.input_terminated``, so werkzeug bounds the stream by
    ``max_content_length`` only, and a body cut short (the client went away, or the
    request's read deadline shut its socket) was read as a shorter body: truncated JSON,
    answered 400 ``INVALID_REQUEST``. Bounded by its Content-Length, as werkzeug does for
    other servers, it raises, and the error mapping answers 408 ``REQUEST_TIMEOUT`` when
    the read deadline cut it (``webhook_service.web.errors.read_timed_out``), else 400.
    """

    @cached_property
    def stream(self) -> IO[bytes]:
        stream = super().stream
        length = self.content_length
        if length is not None and "wsgi.input_terminated" in self.environ:
            return cast(IO[bytes], LimitedStream(stream, length))
        return stream


def _served_by_the_webhook_door() -> Response:
    """Flask routes the webhook's path only to answer its other methods 405 (with
    ``Allow: POST``). :class:`WebhookEndpoint` serves a POST to either spelling of the
    path; another spelling that werkzeug's routing would still match (``//api/...``)
    is not the webhook."""
    raise NotFound()


def create_app(test_config: Settings | Mapping[str, str] | None = None) -> Flask:
    """Create the app from the environment, or from ``test_config`` (settings or an env map)."""
    settings = test_config if isinstance(test_config, Settings) else load_settings(test_config)
    configure_logging(settings.log_format, settings.log_level)

    app = Flask(__name__)
    app.request_class = ServiceRequest
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    # Never answer with a redirect: Stripe counts a 3xx as a failed delivery.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    svc = build_services(settings)
    app.extensions["nat"] = svc

    errors.init_app(app)
    request_log = RequestLog()
    _init_request_logging(app, request_log)
    app.register_blueprint(ops.bp)
    app.add_url_rule(WEBHOOK_PATH, "webhook", _served_by_the_webhook_door, methods=["POST"])
    init_rate_limit(
        app, quota_views.tenant_bp, billing_views.bp, auth_blueprints=(quota_views.sync_bp,)
    )
    app.register_blueprint(quota_views.tenant_bp)
    app.register_blueprint(quota_views.sync_bp)
    app.register_blueprint(billing_views.bp)

    # POST /api/v1/billing/webhook, the hot path, is served before Flask (same errors,
    # same request line); ProxyFix, if any, wraps both.
    app.wsgi_app = WebhookEndpoint(  # type: ignore[method-assign]
        app.wsgi_app, settings, svc.event_log, request_log
    )
    if settings.trusted_proxy_hops:
        hops = settings.trusted_proxy_hops
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops
        )
    return app


def _init_request_logging(app: Flask, request_log: RequestLog) -> None:
    """Bind a request id to every line and write one canonical line per request."""

    @app.before_request
    def _start() -> None:
        app_globals = g._get_current_object()
        app_globals.request_id, app_globals.started = request_log.start(request.environ)

    @app.after_request
    def _finish(response: Response) -> Response:
        # The proxies' objects, looked up once rather than once per attribute.
        req: Request = request._get_current_object()  # type: ignore[attr-defined]
        app_globals = g._get_current_object()
        request_id = app_globals.get("request_id") or new_request_id()
        response.headers["X-Request-ID"] = request_id
        rule = req.url_rule
        request_log.finish(
            request_id,
            app_globals.get("started"),
            rule.rule if rule else "<unmatched>",
            req.method,
            response.status_code,
            req.remote_addr,
        )
        return response
