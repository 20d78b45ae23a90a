"""Pydantic models of the REST API, split by direction.

``*Create``/``*Update``/``*In`` are what a client may send: ``extra="forbid"``, so a server-controlled
field (owner, integrity, endorsements, identifiers, hv:version) in a request is a 422, never
silently stored. ``*Public`` are what the API returns: built from the views, they carry no internal
column (ids, token hashes, payload digests).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.catalogue import contract
from pipeline.catalogue.views import Page

T = TypeVar("T")

Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$", examples=["debian-12"])]
Hex512 = Annotated[str, Field(pattern=r"^[0-9a-f]{128}$")]
Hex256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Count = Annotated[int, Field(ge=0, le=2**31 - 1)]


def storable_text(value: Any, where: str = "body") -> list[str]:
    """Strings the databases cannot store: NUL characters (PostgreSQL text/JSON) and lone surrogates."""
    if isinstance(value, str):
        if "\x00" in value:
            return [f"{where}: contains a NUL character"]
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return [f"{where}: is not valid Unicode text"]
        return []
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in storable_text(k, where) + storable_text(v, f"{where}.{k}")]
    if isinstance(value, list | tuple):
        return [p for i, v in enumerate(value) for p in storable_text(v, f"{where}[{i}]")]
    return []


class _Storable(BaseModel):
    @model_validator(mode="after")
    def _storable(self) -> Self:
        problems = storable_text(self.model_dump())
        if problems:
            raise ValueError("; ".join(problems))
        return self


class _In(_Storable):
    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# --- requests -------------------------------------------------------------------------------------


class ApplianceIn(_In):
    title: Annotated[str, Field(min_length=1, max_length=200)]
    description: Annotated[str, Field(min_length=1, max_length=5000)]
    vos: Annotated[list[Name], Field(max_length=100)] = []


class PackageIn(_In):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    version: Annotated[str, Field(min_length=1, max_length=200)]
    arch: Annotated[str, Field(min_length=1, max_length=32)]


class ImageCreate(_In):
    uri: Annotated[str, Field(min_length=1, max_length=2048)]
    format: Annotated[str, Field(min_length=1, max_length=16)]
    hypervisor: Annotated[str, Field(min_length=1, max_length=32)]
    size: Annotated[int, Field(gt=0, lt=2**62)]
    sha512: Hex512
    sha256: Hex256
    arch: Annotated[str, Field(min_length=1, max_length=16)]
    os_family: Annotated[str, Field(min_length=1, max_length=32)]
    os_name: Annotated[str, Field(min_length=1, max_length=32)]
    os_version: Annotated[str, Field(min_length=1, max_length=32)]
    min_cores: Count
    recommended_cores: Count
    min_ram_mb: Count
    recommended_ram_mb: Count
    title: Annotated[str, Field(max_length=200)] = ""
    manifest: dict[str, Any] | None = None
    packages: Annotated[list[PackageIn], Field(max_length=20000)] = []

    def to_payload(self) -> contract.ImagePayload:
        data = self.model_dump(exclude={"packages"})
        return contract.ImagePayload(
            **data, packages=tuple(contract.PackageInfo(p.name, p.version, p.arch) for p in self.packages)
        )


class VersionCreate(_In):
    version: Annotated[str, Field(min_length=1, max_length=20)]
    notes: Annotated[str, Field(min_length=1, max_length=1000)]
    images: Annotated[list[ImageCreate], Field(min_length=1, max_length=64)]
    expires: datetime | None = None

    def to_payload(self, appliance: str) -> contract.VersionPayload:
        return contract.VersionPayload(
            appliance, self.version, self.notes, tuple(i.to_payload() for i in self.images), self.expires
        )


class AuditCheckIn(_Storable):
    model_config = ConfigDict(extra="allow")  # audit tools add their own fields (severity, path ...)
    id: Annotated[str, Field(min_length=1, max_length=100)]
    result: Annotated[str, Field(pattern=r"^(pass|fail|waived)$")]
    evidence: str | list[str] = ""
    reason: str | None = None
    waiver: str | None = None


class AuditIn(_Storable):
    model_config = ConfigDict(extra="allow")  # the whole report is kept as sent
    checks: Annotated[list[AuditCheckIn], Field(min_length=1, max_length=1000)]


class EndorsementCreate(_In):
    vo: Name


class UserCreate(_In):
    name: Name
    email: Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$", max_length=254)]
    role: Annotated[str, Field(pattern=r"^(admin|user)$")] = "user"


class TokenCreate(_In):
    label: Annotated[str, Field(min_length=1, max_length=100)]
    days: Annotated[int, Field(ge=1, le=366)] | None = None


class VoCreate(_In):
    name: Name
    description: Annotated[str, Field(max_length=1000)] = ""


# --- responses ------------------------------------------------------------------------------------


class Paged(BaseModel, Generic[T]):
    items: list[T]
    total: int
    offset: int
    limit: int

    @classmethod
    def of(cls, page: Page[Any]) -> Self:
        """A page of views as the response model (``Paged[XPublic].of(page)``)."""
        item_type = cls.model_fields["items"].annotation.__args__[0]  # type: ignore[union-attr]
        items = [item_type.model_validate(i) for i in page.items]
        return cls(items=items, total=page.total, offset=page.offset, limit=page.limit)


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
    expires: datetime | None
    revoked: datetime | None


class TokenIssued(BaseModel):
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
    integrity: str


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
    audit_passed: bool | None


class AuditCheckPublic(_Out):
    id: str
    result: str
    evidence: str
    reason: str | None


class AuditPublic(_Out):
    stored: datetime
    stored_by: str
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


class ImageListPublic(_Out):
    vo: str
    hv_version: int
    created: datetime
    expires: datetime
    url: str
    entries: int


class ErrorPublic(BaseModel):
    error: str = Field(description="the error class, e.g. VersionConflict")
    detail: str
    problems: list[str] = []
    hint: str | None = None
