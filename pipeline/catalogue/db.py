"""Engine and session factory, built on demand (no module-level engine).

SQLite gets foreign keys switched on and a busy timeout so that concurrent writers wait instead of
failing; PostgreSQL gets a pre-ping so a restarted server does not break a long-lived service.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from pipeline.errors import CatalogueError

WRITE_OPTION = "vmi_write"  # execution option a writing unit of work sets on its connection


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
        if url in ("sqlite://", "sqlite:///:memory:"):
            kwargs["poolclass"] = StaticPool  # one shared in-memory database
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # let the "begin" listener above issue BEGIN
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.close()


def _sqlite_begin(conn: Any) -> None:
    # A writing unit of work takes SQLite's write lock at BEGIN, so read-then-write use cases cannot
    # interleave (SQLite's equivalent of SELECT ... FOR UPDATE); readers stay concurrent under WAL.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE_OPTION) else "BEGIN")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


_ALEMBIC_LOCK = threading.Lock()
MIGRATIONS_INI = Path(__file__).resolve().parent / "migrations" / "alembic.ini"


def alembic_config(url: str) -> Config:
    config = Config(str(MIGRATIONS_INI))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(url: str, revision: str = "head") -> None:
    """Bring the schema at ``url`` to ``revision`` (``head`` = newest); the service runs this at start."""
    with _ALEMBIC_LOCK:  # Alembic keeps its context in module globals: one migration at a time per process
        command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    with _ALEMBIC_LOCK:
        command.downgrade(alembic_config(url), revision)


MIGRATE_HINT = "run `invoke catalogue-migrate` (or restart `invoke serve`, which migrates at start)"


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config("sqlite://"))


def head_revision() -> str:
    """The newest schema revision this code knows (read from the migration scripts, nothing is run)."""
    return str(_scripts().get_current_head())


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at; None for a database without a schema (no tables at all)."""
    with engine.connect() as conn:
        revision = MigrationContext.configure(conn).get_current_revision()
        if revision is None and inspect(conn).get_table_names():
            raise CatalogueError(
                f"vmi.catalogue: {engine.url.render_as_string(hide_password=True)}: has tables but no "
                "Alembic revision: not a catalogue database",
                hint="point vmi.catalogue at the catalogue's database, or at a new file/database",
            )
    return revision


def ensure_schema(url: str, engine: Engine) -> None:
    """Open a catalogue database without migrating it as a side effect.

    At the newest revision: nothing to do (one cheap query). Empty or new (the first start): the
    schema is created by the migrations. Behind: refused with one line naming the command that
    migrates it, because an upgrade of a shared database is the operator's decision, not publish's.
    """
    revision = current_revision(engine)
    if revision is None:
        migrate(url)
        return
    scripts = _scripts()
    head = scripts.get_current_head()
    if revision == head:
        return
    if revision not in {s.revision for s in scripts.walk_revisions()}:
        raise CatalogueError(
            f"vmi.catalogue: {engine.url.render_as_string(hide_password=True)}: the catalogue schema is at revision "
            f"{revision}, newer than this code knows (newest: {head})",
            hint="update vmi-pipeline to the version the catalogue service runs",
        )
    raise CatalogueError(
        f"vmi.catalogue: {engine.url.render_as_string(hide_password=True)}: the catalogue schema is at revision "
        f"{revision}, this code needs {head}",
        hint=MIGRATE_HINT,
    )
