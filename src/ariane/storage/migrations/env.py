"""Alembic environment: runs against the connection handed over by `storage.migrate`."""

from __future__ import annotations

from alembic import context

from ariane.storage.migrate import render_type
from ariane.storage.tables import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    render_item=render_type,
)
with context.begin_transaction():
    context.run_migrations()
