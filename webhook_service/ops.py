"""Operations endpoints: liveness, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from importlib.resources import files
from typing import Any

from flask import Blueprint, Response, current_app
from sqlalchemy.exc import SQLAlchemyError

from webhook_service import metrics
from webhook_service.context import services
from webhook_service.migrate import current_revision, head_revision

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> dict[str, str]:
    """Answer while the process serves; touches nothing."""
    return {"status": "ok"}


@bp.get("/readyz")
def readyz() -> tuple[dict[str, Any], int]:
    """Ready when the database answers, migrations are current and a secret is set."""
    svc = services()
    checks: dict[str, str] = {}
    body: dict[str, Any] = {}
    try:
        with svc.database.transaction() as conn:
            revision = current_revision(conn)
            checks["database"] = "ok"
            head = head_revision()
            checks["migrations"] = (
                "ok"
                if revision == head
                else f"at {revision or 'none'}, expected {head}; run `webhook-service db upgrade`"
            )
            if revision is not None:
                failed, oldest = svc.event_log.failed_summary(conn)
                body["failed_events"] = failed
                body["oldest_failed_event_age_seconds"] = (
                    None if oldest is None else int((datetime.now(UTC) - oldest).total_seconds())
                )
    except SQLAlchemyError as exc:
        checks["database"] = f"unreachable ({type(exc).__name__})"
        checks["migrations"] = "unknown"
    checks["webhook_secret"] = (
        "ok" if svc.settings.webhook_secrets else "STRIPE_WEBHOOK_SECRET is not set"
    )
    limiter = current_app.extensions.get("nat_limiter")
    if limiter is not None and limiter.guarded.shared:
        # Redis down or stalled: limits are counted per process meanwhile; still ready.
        checks["rate_limit_storage"] = limiter.guarded.probe()
    failing = {
        name: state
        for name, state in checks.items()
        if state != "ok" and not state.startswith("degraded")
    }
    if failing:
        message = "; ".join(f"{name}: {state}" for name, state in failing.items())
        return {
            "error": "NOT_READY",
            "message": message,
            "checks": checks,
            **body,
            "status": 503,
        }, 503
    return {"status": "ready", "checks": checks, **body}, 200


@bp.get("/metrics")
def prometheus_metrics() -> Response:
    """Prometheus text, aggregated over every gunicorn worker, and readiness as of now."""
    readiness, status = readyz()
    data, content_type = metrics.render(
        metrics.Readiness(
            ready=status == 200,
            failed_events=readiness.get("failed_events"),
            oldest_failed_event_age_seconds=readiness.get("oldest_failed_event_age_seconds"),
        )
    )
    return Response(data, content_type=content_type)


@cache
def openapi_document() -> bytes:
    """The OpenAPI 3.1 document shipped with the package (``webhook_service/openapi.json``)."""
    return files("webhook_service").joinpath("openapi.json").read_bytes()


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 document of every endpoint."""
    return Response(openapi_document(), content_type="application/json")
