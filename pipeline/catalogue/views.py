"""Read models: ORM rows turned into the API's ``*Public`` schemas inside the unit of work.

Callers (clients, API, pages) never hold ORM objects, so nothing lazy-loads after the session closes
and no internal column (token hashes, payload digests, user ids) can leak into a response. There is
no third typing of an entity: a row becomes the schema the API returns (``schemas``).
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.catalogue import models as m
from pipeline.catalogue.schemas import (
    AppliancePublic,
    AuditCheckPublic,
    AuditPublic,
    EndorsementPublic,
    ImageDetailPublic,
    ImageListPublic,
    ImagePublic,
    ImageSummaryPublic,
    Integrity,
    PackagePublic,
    TokenPublic,
    UserPublic,
    VersionPublic,
    VoPublic,
)


def user_view(u: m.User) -> UserPublic:
    return UserPublic(name=u.name, email=u.email, role=u.role.value, created=u.created)


def token_view(t: m.ApiToken) -> TokenPublic:
    # id: the public part of the token, safe to show and to revoke by
    return TokenPublic(
        id=t.public_id, user=t.user.name, label=t.label, created=t.created, expires=t.expires, revoked=t.revoked
    )


def vo_view(v: m.Vo) -> VoPublic:
    return VoPublic(name=v.name, description=v.description, managers=[u.name for u in v.managers])


def appliance_view(a: m.Appliance) -> AppliancePublic:
    return AppliancePublic(
        name=a.name,
        title=a.title,
        description=a.description,
        owner=a.owner.name,
        maintainers=[u.name for u in a.maintainers],
        vos=[v.name for v in a.vos],
        created=a.created,
    )


def image_info(i: m.Image, appliance: str, version: str) -> ImagePublic:
    return ImagePublic(
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
        locations=list(i.locations or (i.uri,)),
    )


def version_info(v: m.Version) -> VersionPublic:
    name = v.appliance.name
    return VersionPublic(
        appliance=name,
        version=v.version,
        identifier=v.identifier,
        notes=v.notes,
        created=v.created,
        expires=v.expires,
        published=v.published,
        archived=v.archived,
        images=[image_info(i, name, v.version) for i in v.images],
        endorsements=[
            EndorsementPublic(
                vo=e.vo.name, endorsed_by=e.endorsed_by.name, endorsed_at=e.endorsed_at, revoked_at=e.revoked_at
            )
            for e in v.endorsements
        ],
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


def audit_view(a: m.AuditReport, with_checks: bool = True) -> AuditPublic:
    checks = (
        [AuditCheckPublic(id=c.check_id, result=c.result, evidence=c.evidence, reason=c.reason) for c in a.checks]
        if with_checks
        else []
    )
    return AuditPublic(
        stored=a.stored, stored_by=a.stored_by.name, stored_as=a.stored_as, passed=a.passed, checks=checks
    )


def package_info(p: m.ImagePackage) -> PackagePublic:
    return PackagePublic(name=p.name, version=p.version, arch=p.arch)


def image_detail(i: m.Image, appliance: str, version: str) -> ImageDetailPublic:
    # the cloud image properties the build recorded (Glance's hw_firmware_type=uefi for a UEFI-only
    # disk), read from the stored manifest: no column of their own, no migration
    found = (i.manifest or {}).get("image_properties")
    return ImageDetailPublic(
        id=i.id,
        image=image_info(i, appliance, version),
        packages=[package_info(p) for p in i.packages],
        manifest=i.manifest,
        properties={str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {},
    )


def image_summary(i: m.Image, appliance: str, version: str, package_count: int) -> ImageSummaryPublic:
    return ImageSummaryPublic(image=image_info(i, appliance, version), id=i.id, package_count=package_count)


def image_list_info(row: m.ImageListVersion, vo: str, url: str) -> ImageListPublic:
    return ImageListPublic(
        vo=vo, hv_version=row.hv_version, created=row.created, expires=row.expires, url=url, entries=row.entries
    )
