"""The in-process adapter of the ``Catalogue`` protocol: the catalogue database opened in this process.

Loaded by ``client.open_catalogue`` for database URLs only (``sqlite:///...``,
``postgresql+psycopg://...``); every call acts as the local admin (``local-admin``), as whoever can
write the database is in charge of it anyway. Opening does not migrate: a new, empty database gets
its schema (the first start), one at the newest revision is used as it is, and one behind is refused
with a hint to run ``invoke catalogue-migrate``. The endorser's key is read only when a list is signed.

Like the REST API parsing a request body, this adapter validates what it is given against the schemas
(a payload built with ``model_copy``/``model_construct`` skipped that) before the use case runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pipeline.catalogue import auth, endorsements, services
from pipeline.catalogue.contract import (
    AppliancePayload,
    BuildRecord,
    CascadeInfo,
    ImageInfo,
    ImageListInfo,
    NotFound,
    VersionInfo,
    VersionPayload,
    validated,
)
from pipeline.catalogue.db import ensure_schema, make_engine, session_factory
from pipeline.catalogue.schemas import AuditIn, Paged
from pipeline.catalogue.settings import CatalogueSettings
from pipeline.catalogue.signing import load_signer
from pipeline.catalogue.uow import UnitOfWork

PAGE = 500
T = TypeVar("T")


def make_context(settings: CatalogueSettings) -> endorsements.Context:
    """Use-case context: the settings and the list signer (None without a configured key/certificate)."""
    return endorsements.Context(settings, load_signer(settings))


class InProcessCatalogue:
    """The catalogue database opened in this process, acting as the local admin."""

    def __init__(self, settings: CatalogueSettings, actor: str | None = None) -> None:
        self.settings = settings
        self.engine = make_engine(settings.database_url)
        try:
            ensure_schema(settings.database_url, self.engine)
        except BaseException:
            self.engine.dispose()
            raise
        self.uow = UnitOfWork(session_factory(self.engine))
        self.actor = actor or auth.ensure_local_admin(self.uow)
        self.ctx = make_context(settings)

    def ensure_appliance(self, payload: AppliancePayload) -> None:
        checked = validated(AppliancePayload, payload.model_dump(), f"appliance {payload.name}")
        services.ensure_appliance(self.uow, self.actor, checked)

    def get_version(self, appliance: str, version: str) -> VersionInfo | None:
        try:
            return services.get_version(self.uow, appliance, version)
        except NotFound:
            return None

    def register_version(self, payload: VersionPayload) -> VersionInfo:
        checked = validated(VersionPayload, payload.model_dump(), f"{payload.appliance} {payload.version}")
        return services.register_version(self.uow, self.actor, checked, self.settings)

    def list_versions(self, appliance: str) -> list[VersionInfo]:
        return _all_pages(lambda offset: services.list_versions(self.uow, appliance, offset, PAGE))

    def list_images(self) -> list[ImageInfo]:
        return _all_pages(lambda offset: services.list_images(self.uow, offset, PAGE))

    def store_audit(self, appliance: str, version: str, report: Mapping[str, Any]) -> None:
        services.store_audit(self.uow, self.actor, appliance, version, validated(AuditIn, dict(report), "audit report"))

    def endorse(self, appliance: str, version: str, vo: str) -> ImageListInfo:
        return endorsements.endorse(self.uow, self.actor, appliance, version, vo, self.ctx)

    def revoke(self, appliance: str, version: str, vo: str) -> ImageListInfo:
        return endorsements.revoke(self.uow, self.actor, appliance, version, vo, self.ctx)

    def revoke_cascade(self, appliance: str, version: str, vo: str) -> CascadeInfo:
        return endorsements.revoke_cascade(self.uow, self.actor, appliance, version, vo, self.ctx)

    def archive_version(self, appliance: str, version: str) -> None:
        endorsements.archive_version(self.uow, self.actor, appliance, version, self.ctx)

    def image_list(self, vo: str) -> bytes:
        return endorsements.current_image_list(self.uow, vo, self.ctx)

    def build_record(self, appliance: str, version: str | None = None) -> BuildRecord | None:
        try:
            return services.build_record(self.uow, appliance, version)
        except NotFound:
            return None

    def close(self) -> None:
        self.engine.dispose()


def _all_pages(fetch: Callable[[int], Paged[T]]) -> list[T]:
    items: list[T] = []
    while True:
        page = fetch(len(items))
        items += page.items
        if len(items) >= page.total or not page.items:
            return items
