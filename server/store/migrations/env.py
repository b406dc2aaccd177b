"""Alembic's environment: run by :func:`server.store.migrations.upgrade` through Alembic.

It migrates the connection the caller passes in ``config.attributes["connection"]``
(online only; Staffel does not render SQL scripts), one transaction per revision, so a
revision may leave its transaction for statements PostgreSQL refuses inside one.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from server.store.db import load_models


def run_migrations() -> None:
    """Runs the pending revisions on the caller's connection."""
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise TypeError("run migrations through server.store.migrations.upgrade")
    context.configure(
        connection=connection,
        target_metadata=load_models(),
        render_as_batch=connection.dialect.name == "sqlite",
        transaction_per_migration=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
