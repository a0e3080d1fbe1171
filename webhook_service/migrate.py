"""Schema migrations (Alembic), run by `webhook-service db upgrade` and checked by /readyz."""

from __future__ import annotations

from functools import cache

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

from webhook_service.db import Database

MIGRATION_LOCK_KEY = 0x4E41545748  # "NATWH"


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


def upgrade(database: Database, revision: str = "head") -> None:
    """Bring the schema up to ``revision`` in one transaction."""
    config = alembic_config()
    with database.transaction(write=True) as conn:
        if not database.is_sqlite:
            # Several instances may run their release step at once: one migrates.
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
