"""Read models: ORM rows turned into plain frozen dataclasses inside the unit of work.

Callers (client, API, pages) never hold ORM objects, so nothing lazy-loads after the session closes
and no internal column (token hashes, payload digests, user ids) can leak into a response.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from pipeline.catalogue import models as m
from pipeline.catalogue.contract import (
    EndorsementInfo,
    ImageInfo,
    ImageListInfo,
    Integrity,
    PackageInfo,
    VersionInfo,
)

T = TypeVar("T")


@dataclass(frozen=True)
class UserView:
    name: str
    email: str
    role: str
    created: datetime


@dataclass(frozen=True)
class TokenView:
    id: str  # the public part of the token: safe to show and to revoke by
    user: str
    label: str
    created: datetime
    expires: datetime
    revoked: datetime | None


@dataclass(frozen=True)
class VoView:
    name: str
    description: str
    managers: tuple[str, ...]


@dataclass(frozen=True)
class ApplianceView:
    name: str
    title: str
    description: str
    owner: str
    maintainers: tuple[str, ...]
    vos: tuple[str, ...]
    created: datetime


@dataclass(frozen=True)
class AuditCheckView:
    id: str
    result: str
    evidence: str
    reason: str | None


@dataclass(frozen=True)
class AuditView:
    stored: datetime
    stored_by: str
    stored_as: str  # admin | endorser | maintainer: a maintainer's own audit never gates endorsement
    passed: bool
    checks: tuple[AuditCheckView, ...]


@dataclass(frozen=True)
class ImageDetail:
    image: ImageInfo
    id: int
    packages: tuple[PackageInfo, ...]
    manifest: dict[str, Any] | None

    @property
    def properties(self) -> dict[str, str]:
        """The cloud image properties the build recorded (Glance's ``hw_firmware_type=uefi`` for a
        UEFI-only disk), read from the stored manifest: no column of their own, no migration."""
        found = (self.manifest or {}).get("image_properties")
        return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


@dataclass(frozen=True)
class ImageSummary:
    """An image on its version's page: the package list is only counted."""

    image: ImageInfo
    id: int
    package_count: int


@dataclass(frozen=True)
class Page(Generic[T]):
    items: tuple[T, ...]
    total: int
    offset: int
    limit: int


def user_view(u: m.User) -> UserView:
    return UserView(u.name, u.email, u.role.value, u.created)


def token_view(t: m.ApiToken) -> TokenView:
    return TokenView(t.public_id, t.user.name, t.label, t.created, t.expires, t.revoked)


def vo_view(v: m.Vo) -> VoView:
    return VoView(v.name, v.description, tuple(u.name for u in v.managers))


def appliance_view(a: m.Appliance) -> ApplianceView:
    return ApplianceView(
        a.name,
        a.title,
        a.description,
        a.owner.name,
        tuple(u.name for u in a.maintainers),
        tuple(v.name for v in a.vos),
        a.created,
    )


def image_info(i: m.Image, appliance: str, version: str) -> ImageInfo:
    return ImageInfo(
        appliance=appliance,
        version=version,
        identifier=i.identifier,
        uri=i.uri,
        format=i.format,
        hypervisor=i.hypervisor,
        size=i.size,
        sha512=i.sha512,
        sha256=i.sha256,
        arch=i.arch,
        os_family=i.os_family,
        os_name=i.os_name,
        os_version=i.os_version,
        min_cores=i.min_cores,
        recommended_cores=i.recommended_cores,
        min_ram_mb=i.min_ram_mb,
        recommended_ram_mb=i.recommended_ram_mb,
        title=i.title,
        integrity=Integrity(i.integrity),
        locations=tuple(i.locations or (i.uri,)),
    )


def version_info(v: m.Version) -> VersionInfo:
    name = v.appliance.name
    return VersionInfo(
        appliance=name,
        version=v.version,
        identifier=v.identifier,
        notes=v.notes,
        created=v.created,
        expires=v.expires,
        published=v.published,
        archived=v.archived,
        images=tuple(image_info(i, name, v.version) for i in v.images),
        endorsements=tuple(
            EndorsementInfo(e.vo.name, e.endorsed_by.name, e.endorsed_at, e.revoked_at) for e in v.endorsements
        ),
        audit_passed=_audit_passed(v.audits),
        sbom_sha256=v.sbom_sha256,
    )


COUNTING = (m.AuditRole.ADMIN.value, m.AuditRole.ENDORSER.value)


def shown_audit(audits: Sequence[m.AuditReport]) -> m.AuditReport | None:
    """Newest first in, the audit to show out: the newest one that can count, else the newest."""
    counting = [a for a in audits if a.stored_as in COUNTING]
    return counting[0] if counting else (audits[0] if audits else None)


def _audit_passed(audits: Sequence[m.AuditReport]) -> bool | None:
    """Whether the newest audit stored by an admin or an endorser passes; None if there is none."""
    counting = [a for a in audits if a.stored_as in COUNTING]
    return counting[0].passed if counting else None


def audit_view(a: m.AuditReport, with_checks: bool = True) -> AuditView:
    checks = tuple(AuditCheckView(c.check_id, c.result, c.evidence, c.reason) for c in a.checks) if with_checks else ()
    return AuditView(a.stored, a.stored_by.name, a.stored_as, a.passed, checks)


def image_detail(i: m.Image, appliance: str, version: str) -> ImageDetail:
    return ImageDetail(
        image_info(i, appliance, version),
        i.id,
        tuple(PackageInfo(p.name, p.version, p.arch) for p in i.packages),
        i.manifest,
    )


def image_list_info(row: m.ImageListVersion, vo: str, url: str) -> ImageListInfo:
    return ImageListInfo(vo, row.hv_version, row.created, row.expires, url, row.entries)
