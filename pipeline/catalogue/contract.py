"""What publish, endorse and rebuild may rely on when they talk to the catalogue.

Plain frozen dataclasses and one ``Catalogue`` protocol, no ORM or HTTP types, so the in-process
implementation (SQLAlchemy URL, acting as the local admin) and the HTTP implementation (REST API,
token from ``VMI_CATALOGUE_TOKEN``) are interchangeable. Get one with
``pipeline.catalogue.client.open_catalogue(settings, token=None)``.

Plain payloads only: this module knows neither the appliance model nor the build manifest (publish
turns those into payloads, ``pipeline.registration``). Note for callers: ``register_version`` is one
transaction, idempotent for an identical payload, and raises
``VersionConflict`` (a ``CatalogueError``) for a different payload under an existing version. For
images in the served ``file://`` repository the server hashes the file itself and refuses a payload
whose size or checksums differ (``InvalidPayload``); the stored checksums are always the server's.
Image URLs must lie under the repository's public base (``vmi.repository_public_url``), which is
what publish registers; anything else (``file://``, credentials, other hosts) is ``InvalidPayload``.
Audits: a maintainer may store one, but only an admin's (the in-process catalogue acts as one) or a
manager's of the VO can gate that VO's endorsement.
Every refusal is a ``CatalogueError`` subclass below, from both implementations.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from pipeline.errors import CatalogueError


class Integrity(enum.StrEnum):
    """Whether the catalogue itself hashed the image (file repository) or trusts the publisher's figures."""

    VERIFIED = "verified"
    UNCHECKED = "unchecked"


# --- errors every implementation raises (the HTTP client maps status codes back to these) ----------


class NotFound(CatalogueError):
    """The appliance, version, VO, user or token does not exist (HTTP 404)."""


class PermissionDenied(CatalogueError):
    """The caller may not do this to this object (HTTP 403)."""


class NotAuthenticated(CatalogueError):
    """No valid token was given (HTTP 401)."""


class InvalidPayload(CatalogueError):
    """The request breaks a validation rule; ``problems`` names each field (HTTP 422)."""

    def __init__(self, problems: Sequence[str] | str, hint: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems), hint)


class VersionConflict(CatalogueError):
    """A different payload, or an existing object, already holds this name (HTTP 409)."""


class NotEndorsable(CatalogueError):
    """The version cannot be endorsed: no audit, a failing audit, archived or expired (HTTP 409)."""


# --- payloads (what a caller sends) ---------------------------------------------------------------


# Maintainers are told about versions that expire within this many days (pages, rebuild log).
EXPIRY_WARNING_DAYS = 5


@dataclass(frozen=True)
class PackageInfo:
    name: str
    version: str
    arch: str


@dataclass(frozen=True)
class AppliancePayload:
    name: str
    title: str
    description: str
    vos: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImagePayload:
    """One image file of a version. ``size``/``sha512``/``sha256`` are the publisher's figures."""

    uri: str
    format: str  # ova | qcow2 | raw | vmdk | vdi | vhd | iso
    size: int
    sha512: str
    sha256: str
    arch: str
    os_family: str
    os_name: str
    os_version: str
    hypervisor: str = "KVM"
    min_cores: int = 1
    recommended_cores: int = 1
    min_ram_mb: int = 512
    recommended_ram_mb: int = 1024
    title: str = ""
    manifest: Mapping[str, Any] | None = field(default=None, hash=False)  # the build manifest JSON
    packages: tuple[PackageInfo, ...] = ()
    locations: tuple[str, ...] = ()  # every repository holding this image (uri, the primary's, first)


@dataclass(frozen=True)
class VersionPayload:
    appliance: str
    version: str
    notes: str
    images: tuple[ImagePayload, ...]
    expires: datetime | None = None  # default and cap: one year after registration
    sbom: str | None = None  # the version's CycloneDX JSON SBOM, as published (byte for byte, UTF-8)


# --- infos (what a caller gets back) --------------------------------------------------------------


@dataclass(frozen=True)
class ImageInfo:
    appliance: str
    version: str
    identifier: str  # stable across versions of the appliance (dc:identifier in image lists)
    uri: str
    format: str
    hypervisor: str
    size: int
    sha512: str
    sha256: str
    arch: str
    os_family: str
    os_name: str
    os_version: str
    min_cores: int
    recommended_cores: int
    min_ram_mb: int
    recommended_ram_mb: int
    title: str
    integrity: Integrity
    locations: tuple[str, ...] = ()  # every repository holding it, uri first


@dataclass(frozen=True)
class EndorsementInfo:
    vo: str
    endorsed_by: str
    endorsed_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class VersionInfo:
    appliance: str
    version: str
    identifier: str
    notes: str
    created: datetime
    expires: datetime
    published: bool
    archived: bool
    images: tuple[ImageInfo, ...]
    endorsements: tuple[EndorsementInfo, ...]
    audit_passed: bool | None  # None: no audit stored yet
    sbom_sha256: str | None = None  # the stored SBOM's sha256 (GET .../versions/{version}/sbom), None: none

    @property
    def active_vos(self) -> tuple[str, ...]:
        """VOs whose endorsement of this version is in force."""
        return tuple(e.vo for e in self.endorsements if e.revoked_at is None)


@dataclass(frozen=True)
class ImageListInfo:
    vo: str
    hv_version: int  # only ever goes up
    created: datetime
    expires: datetime
    url: str  # the stable URL: <catalogue>/vo/<vo>/image.list
    entries: int


@dataclass(frozen=True)
class RevokedEndorsement:
    appliance: str
    version: str
    vo: str


@dataclass(frozen=True)
class CascadeInfo:
    """What ``revoke --cascade`` withdrew: the version's own endorsement first (unless it was already
    revoked), then those of every version layered on it, in every VO; and one new signed list per VO."""

    revoked: tuple[RevokedEndorsement, ...]
    image_lists: tuple[ImageListInfo, ...]


@dataclass(frozen=True)
class BuildRecord:
    """What was built, read back from the catalogue: the build manifest stored with a version's images.

    ``rebuild`` decides from this on a runner that never saw the build (CI runners start empty), and a
    layered build fetches its base disk through ``images`` (uri, sha512) from the repository.
    """

    appliance: str
    version: str
    created: datetime
    archived: bool
    manifest: Mapping[str, Any] = field(hash=False)  # the build manifest JSON (``BuildManifest.from_dict``)
    packages: tuple[PackageInfo, ...]
    inputs_digest: str
    base_version: str | None  # the base appliance version it was built on (layered appliances only)
    images: tuple[ImageInfo, ...]


def manifest_base_ref(manifest: Mapping[str, Any] | None) -> str | None:
    """``<appliance>@<version>`` of the appliance base a layered build's manifest records, else None
    (a bootstrap or image base, or no manifest): kept in its own column so lineage never reads manifests."""
    base = (manifest or {}).get("base")
    if not isinstance(base, Mapping) or base.get("kind") != "appliance":
        return None
    name, at, version = str(base.get("ref", "")).partition("@")
    return f"{name}@{version}" if at and name and version else None


def outdated_reason(base: VersionInfo, now: datetime) -> str | None:
    """Why ``base`` is no longer a version to build on (archived, expired, revoked wherever it was
    endorsed), or None while it is current."""
    name, version = base.appliance, base.version
    if base.archived:
        return f"{name} {version} is archived"
    if base.expires <= now:
        return f"{name} {version} expired on {base.expires:%Y-%m-%d}"
    if base.endorsements and all(e.revoked_at is not None for e in base.endorsements):
        vos = ", ".join(sorted(e.vo for e in base.endorsements))
        return f"{name} {version} is revoked ({vos})"
    return None


def record_of(info: VersionInfo, manifest: Mapping[str, Any], packages: Sequence[PackageInfo]) -> BuildRecord:
    base = manifest.get("base") if isinstance(manifest.get("base"), dict) else {}
    assert isinstance(base, dict)
    ref = str(base.get("ref", ""))
    base_version = ref.partition("@")[2] or None if base.get("kind") == "appliance" else None
    return BuildRecord(
        appliance=info.appliance,
        version=info.version,
        created=info.created,
        archived=info.archived,
        manifest=manifest,
        packages=tuple(packages),
        inputs_digest=str(manifest.get("inputs_digest", "")),
        base_version=base_version,
        images=info.images,
    )


class Catalogue(Protocol):
    """The catalogue as publish, endorse and rebuild use it (in-process or over HTTP)."""

    def ensure_appliance(self, payload: AppliancePayload) -> None: ...
    def get_version(self, appliance: str, version: str) -> VersionInfo | None: ...
    def register_version(self, payload: VersionPayload) -> VersionInfo: ...
    def list_versions(self, appliance: str) -> list[VersionInfo]: ...
    def list_images(self) -> list[ImageInfo]: ...
    def store_audit(self, appliance: str, version: str, report: Mapping[str, Any]) -> None: ...
    def endorse(self, appliance: str, version: str, vo: str) -> ImageListInfo: ...
    def revoke(self, appliance: str, version: str, vo: str) -> ImageListInfo: ...
    def revoke_cascade(self, appliance: str, version: str, vo: str) -> CascadeInfo:
        """``revoke``, and every version layered on this one (directly or not) in every VO where it is
        endorsed; each VO list is re-signed once."""
        ...

    def archive_version(self, appliance: str, version: str) -> None: ...
    def image_list(self, vo: str) -> bytes: ...
    def build_record(self, appliance: str, version: str | None = None) -> BuildRecord | None:
        """The build of ``version`` (default: the newest version not archived); None if there is none."""
        ...

    def close(self) -> None: ...
