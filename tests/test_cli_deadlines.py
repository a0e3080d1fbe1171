"""The CLI's migrations and batch jobs run without the request path's deadlines.

The app's database cancels a statement after 3 s (statement_timeout), a lock wait after
2 s (lock_timeout) and drops a connection whose answer takes over 4 s (the watchdog). The
CLI's (``db upgrade``, ``events prune``, ``events reconcile``) does none of that, and
``db upgrade`` waits for another release step's migration lock as long as it is held.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

from webhook_service import db
from webhook_service.cli import Runtime, cli
from webhook_service.db import Database
from webhook_service.migrate import MIGRATION_LOCK_KEY, current_revision, head_revision

# Longer than the request path's lock_timeout and answer deadline both.
HOLD_S = db.PG_ANSWER_DEADLINE_S + 1.0

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def _timeouts(conn: Connection) -> tuple[str, str]:
    return (
        conn.execute(text("SHOW statement_timeout")).scalar_one(),
        conn.execute(text("SHOW lock_timeout")).scalar_one(),
    )


@pytest.fixture
def cli_database(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Database]:
    """The database the CLI builds from its settings."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    database = Runtime().database
    yield database
    database.dispose()


def test_the_cli_database_has_no_statement_timeout_the_apps_has(
    database: Database, cli_database: Database
) -> None:
    with database.transaction() as conn:
        assert _timeouts(conn) == ("3s", "2s")
    with cli_database.transaction() as conn:
        assert _timeouts(conn) == ("0", "2s")
        # Past statement_timeout and the answer watchdog's deadline: neither cuts it off.
        started = time.monotonic()
        conn.execute(text("SELECT pg_sleep(:s)"), {"s": HOLD_S})
        assert time.monotonic() - started >= HOLD_S
        assert conn.execute(text("SELECT 1")).scalar_one() == 1


def test_db_upgrade_waits_for_another_release_step_holding_the_migration_lock(
    database: Database, runner: CliRunner
) -> None:
    """A second instance's release step waits for the first's migration, then succeeds
    (it used to fail after lock_timeout's 2 s, failing the deploy)."""
    url = make_url(database.url).set(drivername="postgresql")
    holder = psycopg.connect(url.render_as_string(hide_password=False))
    holder.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
    timer = threading.Timer(HOLD_S, holder.commit)
    timer.start()
    try:
        started = time.monotonic()
        result = runner.invoke(cli, ["db", "upgrade"])
        elapsed = time.monotonic() - started
    finally:
        timer.join()
        holder.close()
    assert result.exit_code == 0, result.output
    assert "is at head" in result.stdout
    assert elapsed >= HOLD_S - 0.5  # it did wait for the lock
    with database.transaction() as conn:
        assert current_revision(conn) == head_revision()


def test_db_upgrade_still_bounds_its_wait_for_table_locks(
    database: Database, runner: CliRunner
) -> None:
    """Only the migration lock is waited for without limit: a table lock the migration
    needs (held here on alembic_version) fails it after lock_timeout, rather than queue
    the serving path's requests behind it for as long as it waits."""
    url = make_url(database.url).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False)) as holder:
        holder.execute("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        result = runner.invoke(cli, ["db", "upgrade"])
        elapsed = time.monotonic() - started
        holder.rollback()
    assert result.exit_code == 1, result.output
    assert "LockNotAvailable" in result.stderr
    assert db.PG_LOCK_TIMEOUT_MS / 1000 - 0.5 < elapsed < db.PG_LOCK_TIMEOUT_MS / 1000 + 3
