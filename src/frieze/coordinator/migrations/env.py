"""Alembic environment: runs against the connection handed in by frieze.coordinator.catalog.db.upgrade."""

from __future__ import annotations

from alembic import context

from frieze.coordinator.catalog.models import Base

target_metadata = Base.metadata
connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only via frieze.coordinator.catalog.db
    raise RuntimeError("run migrations through frieze.coordinator.catalog.db.upgrade")
context.configure(
    connection=connection,
    target_metadata=target_metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
