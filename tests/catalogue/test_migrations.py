"""Alembic is the only way the schema changes: upgrade from empty, downgrade, and no drift from the models."""

from __future__ import annotations

from collections.abc import Callable

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from pipeline.catalogue import services
from pipeline.catalogue.contract import AppliancePayload, ImagePayload, VersionPayload
from pipeline.catalogue.db import alembic_config, downgrade, migrate
from pipeline.catalogue.models import Base
from tests.catalogue.conftest import Api


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


def test_upgrade_records_the_base_of_versions_registered_before_the_base_ref_column(
    api: Api, publish_file: Callable[..., ImagePayload]
) -> None:
    """Migration 0003 fills ``versions.base_ref`` from the first manifest, so lineage never reads manifests."""
    services.ensure_appliance(
        api.uow, "alice", AppliancePayload(name="science", title="Science", description="layered", vos=())
    )
    base = {"kind": "appliance", "ref": "debian-12@2026.11.22", "digest": "sha256:" + "0" * 64}
    for version, manifest in (("1", {"base": base}), ("2", {"base": {"kind": "image", "ref": "debian-12.qcow2"}})):
        images = (publish_file("science", version, "qcow2", manifest=manifest),)
        services.register_version(
            api.uow,
            "alice",
            VersionPayload(appliance="science", version=version, notes="v", images=images),
            api.settings,
        )
    url = api.settings.database_url
    downgrade(url, "0002_audit_roles_token_expiry")  # as a catalogue upgraded from before the column
    migrate(url)
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT version, base_ref FROM versions ORDER BY version")).all()
        images = conn.execute(text("SELECT count(*) FROM images")).scalar_one()
    engine.dispose()
    assert [tuple(r) for r in rows] == [("1", "debian-12@2026.11.22"), ("2", None)]
    assert images == 2  # down and up again keeps every image (no table copy cascading to them)
    lineage = api.client.get("/api/v1/appliances/science/versions/1").json()["lineage"]
    assert lineage == {
        "base_appliance": "debian-12", "base_version": "2026.11.22", "outdated": True,
        "reason": "debian-12 2026.11.22 is not in the catalogue",
    }  # fmt: skip
