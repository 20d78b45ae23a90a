"""Alembic is the only way the schema changes: upgrade from empty, downgrade, and no drift from the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from pipeline.catalogue.db import alembic_config, downgrade, migrate
from pipeline.catalogue.models import Base


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_single_head() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1


def test_upgrade_from_empty_matches_the_models_and_downgrades(database_url: str) -> None:
    # the PostgreSQL database comes from a migrated template: start from base to prove the path from empty
    downgrade(database_url, "base")
    assert _tables(database_url) == set()
    migrate(database_url)
    assert _tables(database_url) == set(Base.metadata.tables)
    engine = create_engine(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    engine.dispose()
    assert diff == [], f"models and migrations differ (write a migration): {diff}"
    downgrade(database_url, "base")
    assert _tables(database_url) == set()
    migrate(database_url)  # and up again
    assert _tables(database_url) == set(Base.metadata.tables)


def _migrate_in_process(url: str) -> None:
    migrate(url)


def test_processes_opening_a_new_database_at_once_migrate_in_turn(database_url: str) -> None:
    """Parallel publishes on a fresh catalogue: every process migrates or finds it migrated, none fails."""
    import multiprocessing

    downgrade(database_url, "base")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_migrate_in_process, args=(database_url,)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert _tables(database_url) == set(Base.metadata.tables)
