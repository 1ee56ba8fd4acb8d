"""Alembic environment: always called by `store.migrate.upgrade` with an open connection."""

from __future__ import annotations

from alembic import context

from exitgate.store.sql_schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,  # SQLite cannot ALTER most things: batch mode copies the table
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
