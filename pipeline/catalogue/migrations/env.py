"""Alembic environment: metadata from ``models``, the URL (or a live connection) from the caller."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection

from pipeline.catalogue.db import WRITE_OPTION, make_engine
from pipeline.catalogue.models import Base

config = context.config
MIGRATION_LOCK = 0x766D6963  # "vmic": the advisory lock that serialises migrations on PostgreSQL
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("VMI_CATALOGUE", "")
    if not url:
        raise RuntimeError("no database URL: set VMI_CATALOGUE or pass sqlalchemy.url")
    engine = make_engine(url)
    try:
        # Processes that open the catalogue at once (parallel publishes) migrate one after the other:
        # the lock is taken before Alembic reads the current revision, inside the migration transaction.
        with engine.connect() as conn, conn.execution_options(**{WRITE_OPTION: True}).begin():
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported; run against a database")
run_migrations()
