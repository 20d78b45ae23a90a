"""Unit of work: one transaction per use case, rolled back unless the use case commits.

``with uow:`` opens a session and a repository; leaving the block without ``uow.commit()`` (or on an
exception) discards every change, so two writes of one use case are atomic or absent together.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from pipeline.catalogue.db import WRITE_OPTION
from pipeline.catalogue.models import CatalogueState
from pipeline.catalogue.repository import Repository

_local_writes = 0


def changed() -> None:
    """Note a committed write in this process (response caches re-read the generation at once)."""
    global _local_writes
    _local_writes += 1


def local_writes() -> int:
    return _local_writes


class UnitOfWork:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._session: Session | None = None
        self._repo: Repository | None = None
        self._write = False

    def writing(self) -> Self:
        """Enter as a writer: on SQLite the write lock is taken at BEGIN (no lost updates)."""
        self._write = True
        return self

    def __enter__(self) -> Self:
        if self._session is not None:
            raise RuntimeError("a unit of work is not re-entrant")
        session = self._sessions()
        if self._write:
            session.connection(execution_options={WRITE_OPTION: True})
        self._session = session
        self._repo = Repository(session)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        session = self._session
        self._session = None
        self._repo = None
        self._write = False
        if session is not None:
            session.rollback()
            session.close()

    @property
    def repo(self) -> Repository:
        if self._repo is None:
            raise RuntimeError("use the unit of work inside `with uow:`")
        return self._repo

    def commit(self) -> None:
        if self._session is None:
            raise RuntimeError("use the unit of work inside `with uow:`")
        self._session.execute(update(CatalogueState).values(generation=CatalogueState.generation + 1))
        self._session.commit()
        changed()

    def rollback(self) -> None:
        if self._session is not None:
            self._session.rollback()
