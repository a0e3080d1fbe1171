"""Schema migrations (Alembic), run by `webhook-service db upgrade` and checked by /readyz.

Migrations follow expand, then contract (README, "Migrations"): a release only adds what
the previous release can ignore, and removes only what the release before it stopped
using. So code runs against a schema one release newer than itself (a rolling deploy
after the new release migrated, or a rollback): such a schema is *ahead*, and ready.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

from webhook_service.db import Database

MIGRATION_LOCK_KEY = 0x4E41545748  # "NATWH"
# How long `db upgrade` waits for the migration lock: without limit (0). Its holder is
# another instance's release step, migrating; it lets go when that migration commits or
# fails, or when its session ends (TCP keepalives notice a holder gone away). Any finite
# wait shorter than the slowest migration would fail the very deploy that only had to
# wait, and the deploy's own timeout still bounds the whole release step. Once the lock
# is held, the database's lock_timeout applies again to the migration's table locks.
MIGRATION_LOCK_WAIT_MS = 0


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", "webhook_service:migrations")
    return config


@cache
def head_revision() -> str | None:
    """The newest migration shipped with this code."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(conn: Connection) -> str | None:
    """The schema's revision, or None before the first migration."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one_or_none()


@cache
def known_revisions() -> frozenset[str]:
    """Every migration shipped with this code."""
    script = ScriptDirectory.from_config(alembic_config())
    return frozenset(rev.revision for rev in script.walk_revisions())


@dataclass(frozen=True)
class SchemaState:
    """Where the database's schema stands against this code's migrations."""

    database: str | None  # the database's revision; None before the first migration
    code: str | None  # this code's newest migration

    @property
    def current(self) -> bool:
        return self.database == self.code

    @property
    def ahead(self) -> bool:
        """Migrated by a newer release: a revision this code does not ship."""
        return self.database is not None and self.database not in known_revisions()

    @property
    def usable(self) -> bool:
        """This code runs on it: current, or ahead (expand-then-contract keeps it so)."""
        return self.current or self.ahead

    def describe(self) -> str:
        if self.current:
            return f"at {self.code}"
        if self.ahead:
            return f"at {self.database}, ahead of this code's {self.code}"
        return f"at {self.database or 'none'}, expected {self.code}"


def schema_state(conn: Connection) -> SchemaState:
    return SchemaState(current_revision(conn), head_revision())


class DatabaseAhead(Exception):
    """The database was migrated by a newer release than this code: nothing to do."""

    def __init__(self, state: SchemaState) -> None:
        super().__init__(
            f"database is at {state.database}, ahead of this code's newest migration "
            f"{state.code} (migrated by a newer release); nothing to do"
        )
        self.state = state


def upgrade(database: Database, revision: str = "head") -> None:
    """Bring the schema up to ``revision`` in one transaction.

    ``database`` should be made with ``request_deadlines=False`` (the CLI's is): with the
    serving path's deadlines a statement over 3 s, or a wait for the migration lock over
    4 s, fails the migration.

    Raises :class:`DatabaseAhead` (changing nothing) when the database is at a revision
    this code does not know: a newer release migrated it, and this one runs on it as is.
    """
    config = alembic_config()
    with database.transaction(write=True) as conn:
        if not database.is_sqlite:
            # Several instances may run their release step at once: one migrates, the
            # others wait for it (MIGRATION_LOCK_WAIT_MS), then find nothing to do.
            (timeout,) = conn.execute(text("SHOW lock_timeout")).one()
            conn.execute(text(f"SET LOCAL lock_timeout = {MIGRATION_LOCK_WAIT_MS}"))
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            conn.execute(
                text("SELECT set_config('lock_timeout', :value, true)"), {"value": timeout}
            )
        state = schema_state(conn)
        if state.ahead:
            raise DatabaseAhead(state)
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
