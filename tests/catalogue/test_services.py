"""Use cases and the unit of work on the real databases: transactions, ownership, background re-signing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text

from pipeline.catalogue import auth, endorsements, services
from pipeline.catalogue.contract import AppliancePayload, NotFound, PermissionDenied, VersionPayload
from pipeline.catalogue.db import make_engine, migrate, session_factory
from pipeline.catalogue.inprocess import make_context
from pipeline.catalogue.models import Role, User, utcnow
from pipeline.catalogue.schemas import AuditIn
from pipeline.catalogue.settings import CatalogueSettings
from pipeline.catalogue.uow import UnitOfWork
from tests.catalogue.conftest import APPLIANCE, PASSING_AUDIT


@pytest.fixture
def engine(cat_settings: CatalogueSettings) -> Iterator[Engine]:
    migrate(cat_settings.database_url)
    e = make_engine(cat_settings.database_url)
    yield e
    e.dispose()


@pytest.fixture
def uow(engine: Engine) -> UnitOfWork:
    return UnitOfWork(session_factory(engine))


def _users(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT name FROM users ORDER BY name"))]


def test_unit_of_work_rolls_back_unless_committed(uow: UnitOfWork, engine: Engine) -> None:
    with uow.writing():
        uow.repo.add(User(name="kept-out", email="x@y", role=Role.USER, created=utcnow()))
        uow.repo.flush()
    with pytest.raises(RuntimeError), uow.writing():
        uow.repo.add(User(name="failed", email="x@y", role=Role.USER, created=utcnow()))
        uow.repo.flush()
        raise RuntimeError("use case failed after writing")
    with uow.writing():
        uow.repo.add(User(name="committed", email="x@y", role=Role.USER, created=utcnow()))
        uow.commit()
    assert _users(engine) == ["committed"]


def test_appliance_ownership_and_vo_creation(uow: UnitOfWork) -> None:
    auth.ensure_user(uow, "admin", "a@x", Role.ADMIN)
    auth.ensure_user(uow, "alice", "b@x", Role.USER)
    auth.ensure_user(uow, "bob", "c@x", Role.USER)
    with pytest.raises(NotFound, match="VO 'vo.example.org'"):  # users cannot invent VOs
        services.ensure_appliance(uow, "alice", APPLIANCE)
    assert services.list_appliances(uow, 0, 10).total == 0  # and nothing was half-created
    view = services.ensure_appliance(uow, "admin", APPLIANCE)  # admins can
    assert view.owner == "admin" and view.vos == ["vo.example.org"]
    mine = services.ensure_appliance(
        uow, "alice", AppliancePayload(name="alices", title="T", description="D", vos=("vo.example.org",))
    )
    assert mine.owner == "alice"
    with pytest.raises(PermissionDenied):
        services.ensure_appliance(
            uow, "bob", AppliancePayload(name="alices", title="Taken over", description="D", vos=())
        )
    services.set_maintainer(uow, "alice", "alices", "bob", present=True)
    updated = services.ensure_appliance(
        uow, "bob", AppliancePayload(name="alices", title="Now by bob", description="D", vos=())
    )
    assert updated.owner == "alice" and updated.title == "Now by bob" and updated.maintainers == ["bob"]
    with pytest.raises(PermissionDenied, match="only the owner"):
        services.set_maintainer(uow, "bob", "alices", "bob", present=False)


def test_background_refresh_resigns_only_due_lists(
    signing_settings: CatalogueSettings, version_payload: Callable[..., VersionPayload]
) -> None:
    migrate(signing_settings.database_url)
    engine = make_engine(signing_settings.database_url)
    uow = UnitOfWork(session_factory(engine))
    ctx = make_context(signing_settings)
    auth.ensure_user(uow, "admin", "a@x", Role.ADMIN)
    services.ensure_appliance(uow, "admin", APPLIANCE)
    services.register_version(uow, "admin", version_payload(), signing_settings)
    services.store_audit(uow, "admin", "debian-12", "2026.11.22", AuditIn.model_validate(PASSING_AUDIT))
    first = endorsements.endorse(uow, "admin", "debian-12", "2026.11.22", "vo.example.org", ctx)
    assert endorsements.refresh_all_image_lists(uow, ctx) == []  # nothing due yet
    future = datetime.now(UTC) + signing_settings.list_lifetime - signing_settings.resign_margin + timedelta(minutes=1)
    (again,) = endorsements.refresh_all_image_lists(uow, ctx, now=future)
    assert again.vo == "vo.example.org" and again.hv_version > first.hv_version and again.entries == first.entries
    history = endorsements.image_list_history(uow, "vo.example.org", ctx)
    assert [reason for _, reason in history] == ["re-sign before expiry", "endorse debian-12 2026.11.22"]
    engine.dispose()
