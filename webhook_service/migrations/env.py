"""Alembic environment: runs on the connection handed in by webhook_service.migrate."""

from __future__ import annotations

from alembic import context

from webhook_service.models import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - always called through webhook_service.migrate
    raise RuntimeError("run migrations with `webhook-service db upgrade`")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
