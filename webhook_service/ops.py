"""Operations endpoints: liveness, readiness and metrics.

``/readyz`` runs each of :data:`READINESS_CHECKS` in turn; a check writes its verdicts
into ``checks`` ("ok" or what is wrong) and may add facts to the body. Any verdict other
than "ok" makes the answer 503 listing them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response
from sqlalchemy import Connection, text
from sqlalchemy.exc import SQLAlchemyError

from webhook_service import metrics
from webhook_service.context import Services, services
from webhook_service.db import sqlite_file
from webhook_service.migrate import schema_state

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


def _write_probe(conn: Connection, is_sqlite: bool) -> str:
    """Whether this connection can write: "ok" or what stops it. Never commits.

    SQLite: the probe runs in ``BEGIN IMMEDIATE`` (the write lock, through the writer
    queue) and opens a write on a table without changing a row, which a connection that
    opened the file read-only refuses (SQLITE_READONLY; db.py then drops that connection,
    so the next one opens the file afresh). No page is written. PostgreSQL: a read-only
    server (a standby) or ``default_transaction_read_only`` make the transaction
    read-only; asking costs no write and no transaction id.
    """
    if is_sqlite:
        conn.execute(text("UPDATE alembic_version SET version_num = version_num WHERE 0"))
        return "ok"
    read_only = conn.execute(text("SELECT current_setting('transaction_read_only')")).scalar()
    return "read-only (transaction_read_only is on)" if read_only == "on" else "ok"


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
            checks["migrations"] = "ok" if state.usable else state.describe()
            if state.ahead:
                body["schema"] = {"database": state.database, "code": state.code, "ahead": True}
            migrated = state.database is not None
            if migrated:
                failed, oldest = svc.event_log.failed_summary(conn)
                body["failed_events"] = failed
                body["oldest_failed_event_age_seconds"] = (
                    None if oldest is None else int((datetime.now(UTC) - oldest).total_seconds())
                )
    except SQLAlchemyError as exc:
        checks["database"] = f"unreachable ({type(exc).__name__})"
        checks["migrations"] = "unknown"
    if not migrated:
        return  # nothing to write to yet; the checks above say why
    verdict = _free_space_problem(database.url)
    if verdict is None:
        try:
            with database.transaction(write=True) as conn:
                verdict = _write_probe(conn, database.is_sqlite)
                raise _RollBack
        except _RollBack:
            pass
        except SQLAlchemyError as exc:
            orig = getattr(exc, "orig", None)
            name = getattr(orig, "sqlite_errorname", None) or type(orig or exc).__name__
            verdict = f"not writable ({name})"
    checks["database_writable"] = verdict or "ok"


def check_webhook_secret(svc: Services, checks: Checks, body: Body) -> None:
    checks["webhook_secret"] = (
        "ok" if svc.settings.webhook_secrets else "STRIPE_WEBHOOK_SECRET is not set"
    )


READINESS_CHECKS: list[Callable[[Services, Checks, Body], None]] = [
    check_database,
    check_webhook_secret,
]


@bp.get("/readyz")
def readyz() -> tuple[dict[str, Any], int]:
    """Ready when the database answers and takes writes, its schema serves this code,
    and a webhook secret is set."""
    svc = services()
    checks: Checks = {}
    body: Body = {}
    for check in READINESS_CHECKS:
        check(svc, checks, body)
    failing = {name: state for name, state in checks.items() if state != "ok"}
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
    """Prometheus text, aggregated over every gunicorn worker."""
    data, content_type = metrics.render()
    return Response(data, content_type=content_type)
