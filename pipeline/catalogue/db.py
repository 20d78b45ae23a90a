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
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

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
