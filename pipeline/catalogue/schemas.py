"""The catalogue's one vocabulary: the pydantic models of the REST API, split by direction.

``*Create``/``*In``/``*Record`` are what a client may send: ``extra="forbid"``, so a server-controlled
field (owner, integrity, endorsements, identifiers, hv:version) in a request is a 422, never
silently stored. ``*Public`` are what the API returns: built from ORM rows inside the unit of work
(``views``), they carry no internal column (token hashes, payload digests, user ids).

The same classes are the stages' contract (``contract`` re-exports them under the names stages use:
``VersionPayload`` is ``VersionRecord``, ``VersionInfo`` is ``VersionPublic`` ...), so what the
in-process adapter returns and what the HTTP client parses are instances of one class, and a field's
rules live here only. Imports only pydantic, the standard library and the catalogue's settings
constants: loading it loads no service code.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, Self, TypeVar
from urllib.parse import unquote, urlsplit

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from pipeline.catalogue.settings import MAX_TOKEN_DAYS

T = TypeVar("T")


class Integrity(enum.StrEnum):
    """Whether the catalogue itself hashed the image (file repository) or trusts the publisher's figures."""

    VERIFIED = "verified"
    UNCHECKED = "unchecked"


# Every string a client sends is UTF-8 encodable text without control characters (one line), or
# with only tab and newline (free text). Patterns run in pydantic-core, which also refuses lone
# surrogates for any field with a pattern ("unable to parse raw data as a unicode string").
LINE = r"^[^\x00-\x1f\x7f-\x9f]*$"
TEXT = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*$"
_TEXT = re.compile(TEXT)
MAX_JSON_DEPTH = 32  # nesting of free-form JSON (manifests, audit reports); real ones use fewer than 8
MAX_JSON_ITEMS = 200_000  # values in one free-form JSON document
UNICODE_MEANING = "must be valid Unicode text (no lone surrogates)"
PATTERN_MEANING = {
    LINE: "must be one line of text without control characters",
    TEXT: "must be text without control characters (tab and newline allowed)",
}

Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$", examples=["debian-12"])]
VersionName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,19}$", examples=["2026.11.22"])]
Hex512 = Annotated[str, Field(pattern=r"^[0-9a-f]{128}$")]
Hex256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Count = Annotated[int, Field(ge=0, le=2**31 - 1)]
RowId = Annotated[int, Field(ge=1, le=2**31 - 1)]  # ids in paths: never beyond what the databases store
Format = Literal["ova", "qcow2", "raw", "vmdk", "vdi", "vhd", "iso"]
Hypervisor = Literal["KVM", "QEMU", "QEMU-KVM", "Xen", "VirtualBox", "Hyper-V", "VMWare"]
Arch = Literal["x86_64", "aarch64", "i686", "ppc64le", "s390x"]


Line32 = Annotated[str, Field(min_length=1, max_length=32, pattern=LINE)]
Line100 = Annotated[str, Field(min_length=1, max_length=100, pattern=LINE)]
Line200 = Annotated[str, Field(min_length=1, max_length=200, pattern=LINE)]
OptionalLine200 = Annotated[str, Field(max_length=200, pattern=LINE)]
Text1000 = Annotated[str, Field(min_length=1, max_length=1000, pattern=TEXT)]
OptionalText1000 = Annotated[str, Field(max_length=1000, pattern=TEXT)]
Text2000 = Annotated[str, Field(min_length=1, max_length=2000, pattern=TEXT)]
Text5000 = Annotated[str, Field(min_length=1, max_length=5000, pattern=TEXT)]
Evidence = Annotated[str, Field(max_length=65536, pattern=TEXT)]


def json_problem(value: Any, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Why a free-form JSON value cannot be stored, or None: depth, size, non-text keys or bad strings.

    Iterative (an explicit stack), so no input can exhaust Python's recursion limit.
    """
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    seen = 0
    while stack:
        item, depth, at = stack.pop()
        seen += 1
        if seen > MAX_JSON_ITEMS:
            return f"more than {MAX_JSON_ITEMS} values"
        if isinstance(item, str):
            if not _encodable(item):
                return f"{at or 'value'}: {UNICODE_MEANING}"
            if not _TEXT.match(item):
                return f"{at or 'value'}: {PATTERN_MEANING[TEXT]}"
        elif isinstance(item, dict | list | tuple):
            if depth > max_depth:
                return f"{at or 'value'}: nested deeper than {max_depth} levels"
            if isinstance(item, dict):
                for k, v in item.items():
                    if not isinstance(k, str) or not _encodable(k):
                        return f"{at or 'value'}: keys {UNICODE_MEANING}"
                    if not _TEXT.match(k):
                        return f"{at or 'value'}: keys {PATTERN_MEANING[TEXT]}"
                    stack.append((v, depth + 1, f"{at}.{k}" if at else k))
            else:
                stack.extend((v, depth + 1, f"{at}.{i}" if at else str(i)) for i, v in enumerate(item))
        elif not (item is None or isinstance(item, bool | int | float)):
            return f"{at or 'value'}: {type(item).__name__} is not a JSON value"
        elif isinstance(item, int) and not isinstance(item, bool) and abs(item) >= 2**63:
            return f"{at or 'value'}: integer beyond 64 bits"
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _json_value(value: Any) -> Any:
    if (problem := json_problem(value)) is not None:
        raise ValueError(problem)
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(_json_value)]


def error_lines(errors: Sequence[Mapping[str, Any]], prefix: str = "") -> list[str]:
    """One line per validation error, naming the field; never echoes the offending input."""
    lines = []
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body",))
        msg = str(e.get("msg", "invalid"))
        if e.get("type") == "string_pattern_mismatch":
            pattern = (e.get("ctx") or {}).get("pattern")
            msg = PATTERN_MEANING.get(str(pattern), f"must match {pattern}")
        elif e.get("type") == "string_unicode":
            msg = UNICODE_MEANING
        msg = msg.removeprefix("Value error, ")
        where = ": ".join(p for p in (prefix, loc) if p)
        lines.append(f"{where}: {msg}" if where else msg)
    return lines


def _uri_shape(uri: str) -> str:
    """An absolute http(s) (or file, under a file:// public base) URL without credentials, query,
    fragment, dot segments or backslashes. Where it may point (under the repository's public base) is
    decided by the use case, which knows the settings (``services.image_uri_problem``)."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https", "file", "oci"):
        raise ValueError("must be an http:// or https:// URL (or oci:// for a registry)")
    if parts.scheme != "file" and not parts.hostname:
        raise ValueError("must name a host")
    if "@" in parts.netloc:
        raise ValueError("must not carry credentials (user@host)")
    if parts.query or parts.fragment or "?" in uri or "#" in uri or "\\" in uri or " " in uri:
        raise ValueError("must not have a query, a fragment, spaces or backslashes")
    if any(seg in (".", "..") for seg in unquote(parts.path).split("/")):
        raise ValueError("must not have . or .. path segments")
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError as e:
        raise ValueError(f"bad port: {e}") from None
    return uri


MAX_SBOM_CHARS = 8 * 1024 * 1024  # a few thousand packages with licences stay far below


def _cyclonedx(text: str) -> str:
    """A CycloneDX JSON document: an object with ``bomFormat`` CycloneDX (the schema is checked at build)."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        raise ValueError("must be JSON (a CycloneDX SBOM)") from None
    if not isinstance(doc, dict) or doc.get("bomFormat") != "CycloneDX":
        raise ValueError("must be a CycloneDX JSON SBOM (bomFormat CycloneDX)")
    return text


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)


# --- requests -------------------------------------------------------------------------------------


class ApplianceIn(_In):
    title: Line200
    description: Text5000
    vos: Annotated[list[Name], Field(max_length=100)] = []


class ApplianceRecord(ApplianceIn):
    """What the use case validates: the body plus the name from the path."""

    name: Name


class PackageIn(_In):
    name: Line200
    version: Line200
    arch: Line32


class ImageCreate(_In):
    uri: Annotated[str, Field(min_length=1, max_length=2048, pattern=LINE), AfterValidator(_uri_shape)]
    format: Format
    hypervisor: Hypervisor = "KVM"
    size: Annotated[int, Field(gt=0, lt=2**62)]
    sha512: Hex512
    sha256: Hex256
    arch: Arch
    os_family: Line32
    os_name: Line32
    os_version: Line32
    min_cores: Count = 1
    recommended_cores: Count = 1
    min_ram_mb: Count = 512
    recommended_ram_mb: Count = 1024
    title: OptionalLine200 = ""
    manifest: JsonObject | None = None
    packages: Annotated[list[PackageIn], Field(max_length=20000)] = []
    locations: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=2048, pattern=LINE), AfterValidator(_uri_shape)]],
        Field(max_length=16, description="every repository holding the image (publish to several); uri first"),
    ] = []

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        for low, high in (("min_cores", "recommended_cores"), ("min_ram_mb", "recommended_ram_mb")):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low} must not exceed {high}")
        if self.locations and self.locations[0] != self.uri:
            raise ValueError("locations.0: must be the image's uri (the primary repository's)")
        if len(set(self.locations)) != len(self.locations):
            raise ValueError("locations: names a location twice")
        return self


class VersionCreate(_In):
    version: VersionName
    notes: Text1000
    images: Annotated[list[ImageCreate], Field(min_length=1, max_length=64)]
    expires: AwareDatetime | None = Field(default=None, description="default and cap: one year after registration")
    sbom: Annotated[str, Field(max_length=MAX_SBOM_CHARS), AfterValidator(_cyclonedx)] | None = Field(
        default=None, description="the version's CycloneDX JSON SBOM, as published (GET .../sbom serves it back)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        seen: set[tuple[str, str]] = set()
        for i, img in enumerate(self.images):
            if (img.uri, img.hypervisor) in seen:
                raise ValueError(f"images.{i}.uri: {img.uri} appears twice (uri + hypervisor must be unique)")
            seen.add((img.uri, img.hypervisor))
        if self.expires is not None and self.expires <= datetime.now(UTC):
            raise ValueError("expires: must be in the future")
        return self

    def for_appliance(self, appliance: str) -> VersionRecord:
        """The use case's payload: this (validated) body and the appliance named by the path."""
        fields = {name: getattr(self, name) for name in type(self).model_fields}
        return VersionRecord.model_construct(appliance=appliance, **fields)


class VersionRecord(VersionCreate):
    """What the use case validates: the body plus the appliance name from the path."""

    appliance: Name


class AuditCheckIn(BaseModel):
    model_config = ConfigDict(extra="allow")  # audit tools add their own fields (severity, path ...)
    id: Line100
    result: Literal["pass", "fail", "waived"]
    evidence: Evidence | Annotated[list[Evidence], Field(max_length=1000)] = ""
    reason: Text2000 | None = None
    waiver: Text2000 | None = None

    @model_validator(mode="after")
    def _waiver(self) -> Self:
        if self.result == "waived" and not (self.reason or self.waiver):
            raise ValueError("a waived check needs a reason")
        return self


class AuditIn(BaseModel):
    model_config = ConfigDict(extra="allow")  # the whole report is kept as sent
    checks: Annotated[list[AuditCheckIn], Field(min_length=1, max_length=1000)]

    @model_validator(mode="before")
    @classmethod
    def _free_form(cls, data: Any) -> Any:
        # the extra fields are kept as sent: bounded like every other free-form JSON
        if isinstance(data, dict) and (problem := json_problem(data)) is not None:
            raise ValueError(problem)
        return data


class EndorsementCreate(_In):
    vo: Name


class UserCreate(_In):
    name: Name
    email: Annotated[str, Field(pattern=r"^[^@\s\x00-\x1f\x7f-\x9f]+@[^@\s\x00-\x1f\x7f-\x9f]+$", max_length=254)]
    role: Literal["admin", "user"] = "user"


class TokenCreate(_In):
    label: Line100
    days: Annotated[int, Field(ge=1, le=MAX_TOKEN_DAYS)] | None = Field(
        default=None, description="lifetime in days; the catalogue's default (90 days) when omitted"
    )


class VoCreate(_In):
    name: Name
    description: OptionalText1000 = ""


# --- responses ------------------------------------------------------------------------------------


class Paged(BaseModel, Generic[T]):
    model_config = ConfigDict(frozen=True)
    items: list[T]
    total: int
    offset: int
    limit: int


class UserPublic(_Out):
    name: str
    email: str
    role: str
    created: datetime


class TokenPublic(_Out):
    id: str
    user: str
    label: str
    created: datetime
    expires: datetime = Field(description="the token is refused from this time on")
    revoked: datetime | None


class TokenIssued(BaseModel):
    model_config = ConfigDict(frozen=True)
    token: str = Field(description="the secret: shown once, stored only as a hash")
    info: TokenPublic


class VoPublic(_Out):
    name: str
    description: str
    managers: list[str]


class AppliancePublic(_Out):
    name: str
    title: str
    description: str
    owner: str
    maintainers: list[str]
    vos: list[str]
    created: datetime


class ImagePublic(_Out):
    appliance: str
    version: str
    identifier: str
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
    locations: list[str] = Field(default=[], description="every repository holding the image, uri first")


class EndorsementPublic(_Out):
    vo: str
    endorsed_by: str
    endorsed_at: datetime
    revoked_at: datetime | None


class VersionPublic(_Out):
    appliance: str
    version: str
    identifier: str
    notes: str
    created: datetime
    expires: datetime
    published: bool
    archived: bool
    images: list[ImagePublic]
    endorsements: list[EndorsementPublic]
    sbom_sha256: str | None = Field(default=None, description="sha256 of the SBOM stored with the version, if any")
    audit_passed: bool | None  # None: no audit that can count is stored

    @property
    def active_vos(self) -> tuple[str, ...]:
        """VOs whose endorsement of this version is in force."""
        return tuple(e.vo for e in self.endorsements if e.revoked_at is None)


class ImageLinks(_Out):
    self: str = Field(description="this image with its packages and build manifest (API)")
    page: str = Field(description="the image's web page")
    download: str | None = Field(description="where to fetch the file; null when it is not reachable over http(s)")


class VersionImagePublic(ImagePublic):
    id: int = Field(description="the catalogue id of the image: /images/{id} below the version")
    links: ImageLinks


class VersionLinks(_Out):
    self: str
    page: str
    appliance: str
    audit: str
    versions: str
    changes: str
    sbom: str | None = Field(default=None, description="the version's CycloneDX SBOM; null when none is stored")


class LineagePublic(_Out):
    base_appliance: str
    base_version: str = Field(description="the exact base version this layered version was built on")
    outdated: bool = Field(description="the base version is archived, expired or revoked: rebuild on a current base")
    reason: str | None


class VersionDetailPublic(VersionPublic):
    """A version with its images' ids and the links an API client follows from here."""

    images: list[VersionImagePublic]  # type: ignore[assignment]
    links: VersionLinks
    lineage: LineagePublic | None = Field(description="null unless the version is layered on another appliance")


class AuditCheckPublic(_Out):
    id: str
    result: str
    evidence: str
    reason: str | None


class AuditPublic(_Out):
    stored: datetime
    stored_by: str
    stored_as: str = Field(
        description="admin | endorser | maintainer: a maintainer's own audit never gates endorsement"
    )
    passed: bool
    checks: list[AuditCheckPublic]


class PackagePublic(_Out):
    name: str
    version: str
    arch: str


class ImageDetailPublic(_Out):
    id: int
    image: ImagePublic
    packages: list[PackagePublic]
    manifest: dict[str, Any] | None
    properties: dict[str, str] = Field(
        description="image properties a cloud must set to boot it (Glance: hw_firmware_type=uefi for a UEFI-only "
        "disk; empty for BIOS and hybrid disks), as the build manifest records them"
    )


class ImageSummaryPublic(_Out):
    # an image on its version's page (not in the API): the package list is only counted
    image: ImagePublic
    id: int
    package_count: int


class ImageListPublic(_Out):
    vo: str
    hv_version: int  # only ever goes up
    created: datetime
    expires: datetime
    url: str  # the stable URL: <catalogue>/vo/<vo>/image.list
    entries: int


class RevokedPublic(_Out):
    appliance: str
    version: str
    vo: str


class CascadePublic(_Out):
    # what ``revoke --cascade`` withdrew: the version's own endorsement first (unless it was already
    # revoked), then those of every version layered on it, in every VO; and one new signed list per VO
    revoked: list[RevokedPublic] = Field(description="the version's own endorsement first, then those layered on it")
    image_lists: list[ImageListPublic] = Field(description="one new signed list per VO concerned")


class BuildRecordPublic(_Out):
    # what was built, read back from the catalogue: ``rebuild`` decides from this on a runner that never
    # saw the build (CI runners start empty); a layered build fetches its base disk through ``images``

    appliance: str
    version: str
    created: datetime
    archived: bool
    manifest: dict[str, Any]
    packages: list[PackagePublic]
    inputs_digest: str
    base_version: str | None
    images: list[ImagePublic]


class ErrorPublic(BaseModel):
    error: str = Field(description="the error class, e.g. VersionConflict")
    detail: str
    problems: list[str] = []
    hint: str | None = None
