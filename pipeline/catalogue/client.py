"""The catalogue's client side: what publish, endorse, rebuild and ``tasks.py`` import, and nothing else.

``open_catalogue(settings)`` returns a ``Catalogue`` (the protocol in ``contract``) for
``settings.catalogue``:

- an SQLAlchemy URL (``sqlite:///...``, ``postgresql+psycopg://...``): the in-process adapter
  (``inprocess.InProcessCatalogue``, inside the service package, loaded only then), acting as the
  local admin. Opening it does not migrate an existing database (``invoke catalogue-migrate`` does);
- an ``http(s)://`` URL: the REST API (``http_client.HttpCatalogue``), authenticated with ``token``
  or ``$VMI_CATALOGUE_TOKEN``; the server decides what that user may do.

Both raise the same ``CatalogueError`` subclasses. Importing this module loads no service code
(no ORM, no use cases, no signing key): only the protocol and the payload and result types.
"""

from __future__ import annotations

import os

from pipeline.catalogue.contract import (
    AppliancePayload,
    BuildRecord,
    CascadeInfo,
    Catalogue,
    ImageInfo,
    ImageListInfo,
    ImagePayload,
    PackageInfo,
    VersionInfo,
    VersionPayload,
)
from pipeline.catalogue.settings import catalogue_settings, is_database_url
from pipeline.errors import ConfigError
from pipeline.settings import Settings

__all__ = [
    "AppliancePayload",
    "BuildRecord",
    "CascadeInfo",
    "Catalogue",
    "ImageInfo",
    "ImageListInfo",
    "ImagePayload",
    "PackageInfo",
    "VersionInfo",
    "VersionPayload",
    "open_catalogue",
]

TOKEN_ENV = "VMI_CATALOGUE_TOKEN"


def open_catalogue(settings: Settings, token: str | None = None) -> Catalogue:
    """The catalogue named by ``settings.catalogue`` (see the module docstring)."""
    url = settings.catalogue
    if is_database_url(url):
        from pipeline.catalogue.inprocess import InProcessCatalogue  # the service's code, for database URLs only

        return InProcessCatalogue(catalogue_settings(settings))
    if url.startswith(("http://", "https://")):
        from pipeline.catalogue.http_client import HttpCatalogue

        secret = token or os.environ.get(TOKEN_ENV)
        return HttpCatalogue(url, secret)
    raise ConfigError(
        f"vmi.catalogue: {url!r} is neither a database URL nor an http(s) URL",
        hint="use sqlite:///PATH, postgresql+psycopg://... or https://catalogue.example.org",
    )
