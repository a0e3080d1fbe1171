"""/readyz and `db upgrade` across deploys and rollbacks (a schema ahead of the code), and
/readyz against a database that answers but takes no writes (read-only, a full disk)."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import text
from sqlalchemy.engine import make_url
from werkzeug.test import TestResponse

from tests import stripe_events as se
from tests.helpers import POSTGRES_URL, WEBHOOK_SECRET, wait_for
from webhook_service.cli import cli
from webhook_service.db import Database
from webhook_service.migrate import current_revision, head_revision, upgrade
from webhook_service.web.app import create_app

FUTURE_REVISION = "0099_from_a_newer_release"


@contextmanager
def stamped(database: Database, revision: str | None) -> Iterator[None]:
    """The database's alembic_version set to ``revision`` for the block, then restored."""
    with database.transaction(write=True) as conn:
        before = current_revision(conn)
        conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    try:
        yield
    finally:
        with database.transaction(write=True) as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": before})


def event() -> dict[str, Any]:
    return se.customer_deleted_event(
        customer=se.new_id("cus"), created=int(time.time()), api_version=se.BASIL_API_VERSION
    )


def deliver(app: Flask) -> TestResponse:
    body = se.render(event())
    return app.test_client().post(
        "/api/v1/billing/webhook",
        data=body,
        headers={
            "Content-Type": "application/json",
            "Stripe-Signature": se.sign(body, WEBHOOK_SECRET),
        },
    )


# --------------------------------------------------------------------------- 12.8


def test_schema_ahead_of_the_code_is_ready(
    make_app: Callable[..., Flask], database: Database
) -> None:
    """An old instance after the new release migrated stays in the load balancer."""
    app = make_app()
    with stamped(database, FUTURE_REVISION):
        response = app.test_client().get("/readyz")
        assert response.status_code == 200, response.json
        body = response.json
        assert body is not None
        assert body["checks"]["migrations"] == "ok"
        assert body["schema"] == {
            "database": FUTURE_REVISION,
            "code": head_revision(),
            "ahead": True,
        }
        assert deliver(app).status_code == 200


def test_schema_behind_the_code_is_not_ready(
    make_app: Callable[..., Flask], database: Database
) -> None:
    """A known older revision still means `db upgrade` has not run: 503."""
    app = make_app()
    with stamped(database, "0002"):
        response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json is not None
    assert response.json["checks"]["migrations"] == (
        f"at 0002, expected {head_revision()}; run `webhook-service db upgrade`"
    )


def test_db_upgrade_against_a_newer_schema_says_so_in_one_line(
    runner: CliRunner, database: Database
) -> None:
    """A rollback's release step: one line, exit 0, nothing changed; no alembic traceback."""
    with stamped(database, FUTURE_REVISION):
        result = runner.invoke(cli, ["db", "upgrade"])
        with database.transaction() as conn:
            assert current_revision(conn) == FUTURE_REVISION
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines == [
        f"database is at {FUTURE_REVISION}, ahead of this code's newest migration "
        f"{head_revision()} (migrated by a newer release); nothing to do"
    ]


# --------------------------------------------------------------------------- 12.9 / 11.6


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_read_only_postgresql_is_not_ready(
    request: pytest.FixtureRequest, make_app: Callable[..., Flask], database: Database
) -> None:
    """A standby or default_transaction_read_only: webhooks fail, so /readyz is 503.

    PostgreSQL only: SQLite's read-only files have tests of their own below."""
    name = make_url(database.url).database
    admin = make_url(POSTGRES_URL).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    try:
        app = make_app()
        response = app.test_client().get("/readyz")
        assert response.status_code == 503, response.json
        assert response.json is not None
        assert response.json["checks"]["database_writable"] == (
            "read-only (transaction_read_only is on)"
        )
        assert deliver(app).status_code == 503
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True, check=False).returncode == 0


@contextmanager
def read_only(directory: Path) -> Iterator[Callable[[], None]]:
    """Make the database files of ``directory`` read-only; yield a function that undoes it.

    As root (who ignores file modes) through a read-only bind mount, else by file modes.
    """
    undo: Callable[[], None]
    if os.geteuid() == 0:
        if not _mount("--bind", str(directory), str(directory)):
            pytest.skip("cannot bind-mount (needed to make files read-only for root)")
        if not _mount("-o", "remount,bind,ro", str(directory)):
            subprocess.run(["umount", str(directory)], check=False)
            pytest.skip("cannot remount read-only")

        def undo() -> None:
            # Lazily: descriptors opened read-only stay so, as after a chmod.
            subprocess.run(["umount", "-l", str(directory)], capture_output=True, check=False)

    else:
        files = [p for p in directory.iterdir() if p.name.startswith("ro.db")]
        for path in files:
            path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)

        def undo() -> None:
            for path in files:
                path.chmod(0o644)

    try:
        yield undo
    finally:
        with suppress(Exception):
            undo()


def test_read_only_sqlite_files_are_not_ready_and_recover_at_once(tmp_path: Path) -> None:
    """Read-only database files: /readyz 503 too; writable again: ready within 2 s."""
    directory = tmp_path / "rodb"
    directory.mkdir()
    url = f"sqlite:///{directory / 'ro.db'}"
    setup = Database(url, pool=False)
    upgrade(setup)
    setup.dispose()
    env = {"DATABASE_URL": url, "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET, "LOG_FORMAT": "json"}
    first = create_app(env)
    assert deliver(first).status_code == 200  # the WAL and its index exist
    apps = [first]
    try:
        with read_only(directory) as make_writable:
            app = create_app(env)  # the workers restarted: connections open read-only
            apps.append(app)
            client = app.test_client()
            for _ in range(3):
                assert deliver(app).status_code == 503
            response = client.get("/readyz")
            assert response.status_code == 503, response.json
            assert response.json is not None
            assert response.json["checks"]["database_writable"].startswith("not writable")
            make_writable()
            started = time.monotonic()
            assert wait_for(lambda: deliver(app).status_code == 200, timeout=10, interval=0.1)
            recovered = time.monotonic() - started
            assert client.get("/readyz").status_code == 200
            assert recovered < 2.0, recovered
    finally:
        for application in apps:
            application.extensions["nat"].database.dispose()


def test_full_disk_is_not_ready(tmp_path: Path) -> None:
    """A SQLite database whose filesystem is full fails every write: /readyz is 503."""
    directory = tmp_path / "small"
    directory.mkdir()
    if os.geteuid() != 0 or not _mount("-t", "tmpfs", "-o", "size=24m", "tmpfs", str(directory)):
        pytest.skip("needs root to mount a small filesystem")
    app: Flask | None = None
    try:
        url = f"sqlite:///{directory / 'full.db'}"
        setup = Database(url, pool=False)
        upgrade(setup)
        setup.dispose()
        env = {"DATABASE_URL": url, "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET}
        app = create_app(env)
        client = app.test_client()
        assert client.get("/readyz").status_code == 200
        filler = directory / "filler"
        with filler.open("wb") as out, suppress(OSError):
            while True:
                out.write(b"\0" * 1024 * 1024)
                out.flush()
        response = client.get("/readyz")
        assert response.status_code == 503, response.json
        assert response.json is not None
        assert response.json["checks"]["database_writable"].startswith("disk nearly full")
        filler.unlink()
        assert client.get("/readyz").status_code == 200
    finally:
        if app is not None:
            app.extensions["nat"].database.dispose()
        subprocess.run(["umount", "-l", str(directory)], capture_output=True, check=False)
