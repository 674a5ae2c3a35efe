"""Alembic environment: runs migrations on the connection the controller hands in
(`config.attributes["connection"]`), or on `sqlalchemy.url` from the config."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

config = context.config
# The schema is written by hand in each migration (SQL), so there is no metadata to
# autogenerate from: exclusion constraints with inet_ops need hand-written DDL anyway.
target_metadata = None


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
