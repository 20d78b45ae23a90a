"""What publish, endorse and rebuild may rely on when they talk to the catalogue.

One ``Catalogue`` protocol and the types it speaks, no ORM or HTTP types, so the in-process
implementation (SQLAlchemy URL, acting as the local admin) and the HTTP implementation (REST API,
token from ``VMI_CATALOGUE_TOKEN``) are interchangeable. Get one with
``pipeline.catalogue.client.open_catalogue(settings, token=None)``.

The types are the API's schemas (``schemas``), under the names stages use: what a caller sends
(``AppliancePayload``, ``VersionPayload``, ``ImagePayload``, ``PackageInfo``) is what the API accepts,
validated where it is built (``validated`` turns a refusal into ``InvalidPayload``, one line per
field), and what it gets back (``VersionInfo``, ``ImageInfo``, ``ImageListInfo``, ``BuildRecord`` ...)
is what the API returns, from either implementation. Immutable: ``model_copy(update=...)`` for a
changed copy.

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

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from pipeline.catalogue.schemas import (
    ApplianceRecord,
    BuildRecordPublic,
    CascadePublic,
    EndorsementPublic,
    ImageCreate,
    ImageListPublic,
    ImagePublic,
    Integrity,
    PackageIn,
    PackagePublic,
    RevokedPublic,
    VersionPublic,
    VersionRecord,
    error_lines,
)
from pipeline.errors import CatalogueError

__all__ = [
    "EXPIRY_WARNING_DAYS",
    "AppliancePayload",
    "BuildRecord",
    "CascadeInfo",
    "Catalogue",
    "EndorsementInfo",
    "ImageInfo",
    "ImageListInfo",
    "ImagePayload",
    "Integrity",
    "InvalidPayload",
    "NotAuthenticated",
    "NotEndorsable",
    "NotFound",
    "PackageInfo",
    "PermissionDenied",
    "RevokedEndorsement",
    "VersionConflict",
    "VersionInfo",
    "VersionPayload",
    "manifest_base_ref",
    "outdated_reason",
    "record_of",
    "validated",
]

M = TypeVar("M", bound=BaseModel)

# --- the vocabulary: the API schemas, by the names stages use -------------------------------------

# what a caller sends
PackageInfo = PackageIn
AppliancePayload = ApplianceRecord
ImagePayload = ImageCreate
VersionPayload = VersionRecord
# what a caller gets back
ImageInfo = ImagePublic
EndorsementInfo = EndorsementPublic
VersionInfo = VersionPublic
ImageListInfo = ImageListPublic
RevokedEndorsement = RevokedPublic
CascadeInfo = CascadePublic
BuildRecord = BuildRecordPublic


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


def validated(model: type[M], data: Any, where: str = "") -> M:
    """``model`` validated from plain data; ``InvalidPayload`` with one line per bad field otherwise.

    Every payload is built through here (stages and the in-process catalogue too) or by the API from
    a request body, so the rules in ``schemas`` are the only place where a field's shape is decided.
    """
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise InvalidPayload(error_lines(e.errors(include_input=False), where)) from None


# Maintainers are told about versions that expire within this many days (pages, rebuild log).
EXPIRY_WARNING_DAYS = 5


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


def record_of(info: VersionInfo, manifest: Mapping[str, Any], packages: Sequence[PackagePublic]) -> BuildRecord:
    base = manifest.get("base") if isinstance(manifest.get("base"), dict) else {}
    assert isinstance(base, dict)
    ref = str(base.get("ref", ""))
    base_version = ref.partition("@")[2] or None if base.get("kind") == "appliance" else None
    return BuildRecord(
        appliance=info.appliance,
        version=info.version,
        created=info.created,
        archived=info.archived,
        manifest=dict(manifest),
        packages=list(packages),
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
