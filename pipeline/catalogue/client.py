"""``open_catalogue()``: the catalogue for publish, endorse and rebuild, in-process or over HTTP.

- An SQLAlchemy URL (``sqlite:///...``, ``postgresql+psycopg://...``): the database is opened in this
  process (migrated to the newest schema first) and every call acts as the local admin
  (``local-admin``), as whoever can write the database file is in charge of it anyway.
- An ``http(s)://`` URL: the catalogue's REST API, authenticated with ``token`` or
  ``$VMI_CATALOGUE_TOKEN``; the server decides what that user may do.

Both implement ``contract.Catalogue`` and raise the same ``CatalogueError`` subclasses.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pipeline.catalogue import auth, endorsements, services
from pipeline.catalogue.contract import (
    AppliancePayload,
    BuildRecord,
    CascadeInfo,
    Catalogue,
    ImageInfo,
    ImageListInfo,
    NotFound,
    VersionInfo,
    VersionPayload,
)
from pipeline.catalogue.db import make_engine, migrate, session_factory
from pipeline.catalogue.settings import CatalogueSettings, catalogue_settings, is_database_url
from pipeline.catalogue.uow import UnitOfWork
from pipeline.catalogue.views import Page
from pipeline.errors import ConfigError
from pipeline.settings import Settings

TOKEN_ENV = "VMI_CATALOGUE_TOKEN"
PAGE = 500
T = TypeVar("T")


def make_context(settings: CatalogueSettings) -> endorsements.Context:
    """Use-case context; the signer (``pipeline.endorse``) is loaded only when a key is configured."""
    if settings.signing_key is None or settings.signing_cert is None:
        return endorsements.Context(settings, None)
    from pipeline.catalogue.signing import load_signer

    return endorsements.Context(settings, load_signer(settings))


class InProcessCatalogue:
    """The catalogue database opened in this process, acting as the local admin."""

    def __init__(self, settings: CatalogueSettings, actor: str | None = None) -> None:
        migrate(settings.database_url)
        self.settings = settings
        self.engine = make_engine(settings.database_url)
        self.uow = UnitOfWork(session_factory(self.engine))
        self.actor = actor or auth.ensure_local_admin(self.uow)
        self.ctx = make_context(settings)

    def ensure_appliance(self, payload: AppliancePayload) -> None:
        services.ensure_appliance(self.uow, self.actor, payload)

    def get_version(self, appliance: str, version: str) -> VersionInfo | None:
        try:
            return services.get_version(self.uow, appliance, version)
        except NotFound:
            return None

    def register_version(self, payload: VersionPayload) -> VersionInfo:
        return services.register_version(self.uow, self.actor, payload, self.settings)

    def list_versions(self, appliance: str) -> list[VersionInfo]:
        return _all_pages(lambda offset: services.list_versions(self.uow, appliance, offset, PAGE))

    def list_images(self) -> list[ImageInfo]:
        return _all_pages(lambda offset: services.list_images(self.uow, offset, PAGE))

    def store_audit(self, appliance: str, version: str, report: Mapping[str, Any]) -> None:
        services.store_audit(self.uow, self.actor, appliance, version, report)

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


def _all_pages(fetch: Callable[[int], Page[T]]) -> list[T]:
    items: list[T] = []
    while True:
        page = fetch(len(items))
        items += page.items
        if len(items) >= page.total or not page.items:
            return items


def open_catalogue(settings: Settings, token: str | None = None) -> Catalogue:
    """The catalogue named by ``settings.catalogue`` (see the module docstring)."""
    url = settings.catalogue
    if is_database_url(url):
        return InProcessCatalogue(catalogue_settings(settings))
    if url.startswith(("http://", "https://")):
        from pipeline.catalogue.http_client import HttpCatalogue

        secret = token or os.environ.get(TOKEN_ENV)
        return HttpCatalogue(url, secret)
    raise ConfigError(
        f"vmi.catalogue: {url!r} is neither a database URL nor an http(s) URL",
        hint="use sqlite:///PATH, postgresql+psycopg://... or https://catalogue.example.org",
    )
