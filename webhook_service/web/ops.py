"""Operations endpoints: liveness, readiness, metrics and the OpenAPI document.

``/readyz`` runs each of :data:`READINESS_CHECKS` in turn; a check writes its verdicts
into ``checks`` ("ok", "degraded: ..." or what is wrong) and may add facts to the body.
Any verdict other than "ok" or "degraded" makes the answer 503 listing them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from importlib.resources import files
from typing import Any

from flask import Blueprint, Response, current_app
from sqlalchemy import Connection, text
from sqlalchemy.exc import SQLAlchemyError

from webhook_service import metrics
from webhook_service.db import Database, sqlite_file
from webhook_service.errors import NotReady
from webhook_service.migrate import schema_state
from webhook_service.services import Services
from webhook_service.web.current import services

bp = Blueprint("ops", __name__)

# A SQLite database's filesystem with less free space than this fails writes soon (a
# commit appends to the WAL, a checkpoint grows the file): not ready.
MIN_FREE_BYTES = 16 * 1024 * 1024

Checks = dict[str, str]
Body = dict[str, Any]


@bp.get("/healthz")
def healthz() -> dict[str, str]:
    """Answer while the process serves; touches nothing."""
    return {"status": "ok"}


class _RollBack(Exception):
    """Ends the write probe's transaction without committing."""


def _postgresql_writable(conn: Connection) -> str:
    """A read-only server (a standby) or ``default_transaction_read_only`` make every
    transaction read-only; asking costs no write, no transaction id, no round trip of
    its own (it runs in the readiness transaction)."""
    read_only = conn.execute(text("SELECT current_setting('transaction_read_only')")).scalar()
    return "read-only (transaction_read_only is on)" if read_only == "on" else "ok"


def _sqlite_writable(database: Database) -> str:
    """Whether a SQLite write would go through: "ok" or what stops it. Never commits.

    In ``BEGIN IMMEDIATE`` (the write lock, through the writer queue), a write on a table
    that changes no row: a connection that opened the file read-only refuses it
    (SQLITE_READONLY; db.py then drops that connection, so the next one opens the file
    afresh). No page is written. Then the free space of the file's filesystem.
    """
    problem = _free_space_problem(database.url)
    if problem is not None:
        return problem
    try:
        with database.transaction(write=True) as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = version_num WHERE 0"))
            raise _RollBack
    except _RollBack:
        return "ok"
    except SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None)
        name = getattr(orig, "sqlite_errorname", None) or type(orig or exc).__name__
        return f"not writable ({name})"


def _free_space_problem(database_url: str) -> str | None:
    path = sqlite_file(database_url)
    if path is None:
        return None
    try:
        stat = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError as exc:
        return f"cannot check free space ({exc.strerror})"
    free = stat.f_bavail * stat.f_frsize
    if free < MIN_FREE_BYTES:
        return f"disk nearly full ({free // 1024} KiB free)"
    return None


def check_database(svc: Services, checks: Checks, body: Body) -> None:
    """The database answers, its schema serves this code, and it takes writes."""
    database = svc.database
    migrated = False
    try:
        with database.transaction() as conn:
            state = schema_state(conn)
            checks["database"] = "ok"
            # A schema ahead of the code (a newer release migrated it) serves this code:
            # migrations are expand-then-contract.
            checks["migrations"] = (
                "ok" if state.usable else f"{state.describe()}; run `webhook-service db upgrade`"
            )
            if state.ahead:
                body["schema"] = {"database": state.database, "code": state.code, "ahead": True}
            migrated = state.database is not None
            if migrated:
                failed, oldest = svc.event_log.failed_summary(conn)
                body["failed_events"] = failed
                body["oldest_failed_event_age_seconds"] = (
                    None if oldest is None else int((datetime.now(UTC) - oldest).total_seconds())
                )
                if not database.is_sqlite:
                    checks["database_writable"] = _postgresql_writable(conn)
    except SQLAlchemyError as exc:
        checks["database"] = f"unreachable ({type(exc).__name__})"
        checks["migrations"] = "unknown"
        checks.pop("database_writable", None)
    if migrated and database.is_sqlite:
        checks["database_writable"] = _sqlite_writable(database)


def check_webhook_secret(svc: Services, checks: Checks, body: Body) -> None:
    checks["webhook_secret"] = (
        "ok" if svc.settings.webhook_secrets else "STRIPE_WEBHOOK_SECRET is not set"
    )


def check_rate_limit_storage(svc: Services, checks: Checks, body: Body) -> None:
    """Redis down or stalled: limits are counted per process meanwhile; still ready."""
    limiter = current_app.extensions.get("nat_limiter")
    if limiter is not None and limiter.guarded.shared:
        checks["rate_limit_storage"] = limiter.guarded.probe()


READINESS_CHECKS: list[Callable[[Services, Checks, Body], None]] = [
    check_database,
    check_webhook_secret,
    check_rate_limit_storage,
]


def readiness(svc: Services) -> tuple[bool, Checks, Body]:
    """Whether the service is ready, each check's verdict, and the facts the checks add."""
    checks: Checks = {}
    body: Body = {}
    for check in READINESS_CHECKS:
        check(svc, checks, body)
    ready = all(state == "ok" or state.startswith("degraded") for state in checks.values())
    return ready, checks, body


@bp.get("/readyz")
def readyz() -> Body:
    """Ready when the database answers and takes writes, its schema serves this code,
    and a webhook secret is set; a degraded rate-limit storage is reported, still ready."""
    ready, checks, body = readiness(services())
    if not ready:
        message = "; ".join(
            f"{name}: {state}"
            for name, state in checks.items()
            if state != "ok" and not state.startswith("degraded")
        )
        raise NotReady(message, checks=checks, **body)
    return {"status": "ready", "checks": checks, **body}


@bp.get("/metrics")
def prometheus_metrics() -> Response:
    """Prometheus text, aggregated over every gunicorn worker, and readiness as of now."""
    ready, _checks, body = readiness(services())
    data, content_type = metrics.render(
        metrics.Readiness(
            ready=ready,
            failed_events=body.get("failed_events"),
            oldest_failed_event_age_seconds=body.get("oldest_failed_event_age_seconds"),
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
