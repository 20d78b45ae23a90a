"""Catalogue service settings: derived from the project ``Settings`` plus ``VMI_*`` environment.

Frozen, one default per value. The signing key and certificate are file paths from the environment
(``VMI_SIGNING_KEY``, ``VMI_SIGNING_CERT``), never files in the repository.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pipeline.errors import ConfigError
from pipeline.settings import Settings

DEFAULT_LIST_LIFETIME = timedelta(weeks=4)  # hepixvmitrust's default expiry of an image list
DEFAULT_RESIGN_MARGIN = timedelta(days=7)  # re-sign a list when less than this is left
VERSION_LIFETIME = timedelta(days=365)  # AppDB: default and cap of a version's expiry
LOCAL_ADMIN = "local-admin"  # who the in-process catalogue acts as
MAX_TOKEN_DAYS = 366  # the longest an API token may live
DEFAULT_TOKEN_DAYS = 90  # an API token's lifetime when none is asked for (VMI_TOKEN_LIFETIME_DAYS)
MAX_LIST_LIFETIME_DAYS = 366  # cap of VMI_IMAGE_LIST_LIFETIME_DAYS


@dataclass(frozen=True)
class CatalogueSettings:
    database_url: str  # sqlite:///path or postgresql+psycopg://...
    public_url: str  # base URL of pages, API and image lists, without a trailing slash
    repository_root: Path | None  # the file:// repository served read-only under /repo/
    repository_public_url: str | None  # how that repository is reached from outside
    signing_key: Path | None = None
    signing_cert: Path | None = None
    list_lifetime: timedelta = DEFAULT_LIST_LIFETIME
    resign_margin: timedelta = DEFAULT_RESIGN_MARGIN
    max_page: int = 500  # the largest page a list endpoint returns (OWASP API4)
    max_body_bytes: int = 16 * 1024 * 1024  # the largest request body (manifests with package lists)
    max_json_depth: int = 32  # the deepest nesting of a JSON request body
    token_days: int = DEFAULT_TOKEN_DAYS  # default lifetime of a new API token

    @property
    def image_list_base(self) -> str:
        return f"{self.public_url}/vo"


def catalogue_settings(settings: Settings, environ: Mapping[str, str] | None = None) -> CatalogueSettings:
    """The catalogue's view of the project settings; ``settings.catalogue`` must be a database URL."""
    env = os.environ if environ is None else environ
    if not is_database_url(settings.catalogue):
        raise ConfigError(
            f"vmi.catalogue: {settings.catalogue!r} is not a database URL",
            hint="the service needs sqlite:///PATH or postgresql+psycopg://...; http(s) URLs are for clients",
        )
    root: Path | None = None
    if settings.repository.startswith("file://"):
        root = Path(unquote(urlsplit(settings.repository).path))
    # image URLs are registered only under this base, whichever kind of repository is behind it
    public = settings.repository_public_url.rstrip("/") or None
    if settings.repository.startswith("oci://"):  # a registry: images are registered by reference
        public = settings.repository.rstrip("/")
    lifetime = DEFAULT_LIST_LIFETIME
    if env.get("VMI_IMAGE_LIST_LIFETIME_DAYS"):
        lifetime = timedelta(days=_days(env, "VMI_IMAGE_LIST_LIFETIME_DAYS", MAX_LIST_LIFETIME_DAYS))
    token_days = DEFAULT_TOKEN_DAYS
    if env.get("VMI_TOKEN_LIFETIME_DAYS"):
        token_days = _days(env, "VMI_TOKEN_LIFETIME_DAYS", MAX_TOKEN_DAYS)
    key, cert = env.get("VMI_SIGNING_KEY"), env.get("VMI_SIGNING_CERT")
    return CatalogueSettings(
        database_url=settings.catalogue,
        public_url=settings.catalogue_public_url.rstrip("/"),
        repository_root=root,
        repository_public_url=public,
        signing_key=Path(key) if key else None,
        signing_cert=Path(cert) if cert else None,
        list_lifetime=lifetime,
        token_days=token_days,
    )


def _days(env: Mapping[str, str], name: str, cap: int) -> int:
    text = env[name]
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= cap:
        raise ConfigError(f"environment: {name}: must be a whole number of days from 1 to {cap}")
    return int(text)


def is_database_url(url: str) -> bool:
    return url.startswith(("sqlite:", "postgresql"))
