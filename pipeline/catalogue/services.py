"""Use cases of the catalogue: appliances, versions, audits, endorsements and VO image lists.

Each use case takes the acting user's name, primitives or contract payloads and a unit of work; it
checks who may do it and what the state allows (field shapes are the schemas' business: payloads
arrive validated), writes in one transaction and returns the API's ``*Public`` schemas. Domain
errors are the ``CatalogueError`` subclasses in ``contract`` (mapped to HTTP codes in ``app``).
Users, tokens and VOs live in ``auth``; endorsements and signed VO image lists in ``endorsements``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import socket
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit

from sqlalchemy.exc import IntegrityError

from pipeline.catalogue import models as m
from pipeline.catalogue import views
from pipeline.catalogue.contract import (
    InvalidPayload,
    NotAuthenticated,
    NotFound,
    PermissionDenied,
    VersionConflict,
    manifest_base_ref,
    record_of,
)
from pipeline.catalogue.models import utcnow
from pipeline.catalogue.schemas import (
    AppliancePublic,
    ApplianceRecord,
    AuditIn,
    AuditPublic,
    BuildRecordPublic,
    ImageCreate,
    ImageDetailPublic,
    ImagePublic,
    ImageSummaryPublic,
    Integrity,
    Paged,
    VersionPublic,
    VersionRecord,
)
from pipeline.catalogue.settings import VERSION_LIFETIME, CatalogueSettings
from pipeline.catalogue.uow import UnitOfWork
from pipeline.fsutil import hash_file
from pipeline.manifest import version_sort_key

NAMESPACE = uuid.UUID("4f1b8a51-29a4-5c1e-9a57-7b3d0c9e2a10")  # uuid5 namespace of catalogue identifiers
# --- who is acting ---------------------------------------------------------------------------------


def actor_user(uow: UnitOfWork, actor: str) -> m.User:
    user = uow.repo.user(actor)
    if user is None:
        raise NotAuthenticated(f"user {actor!r} does not exist")
    return user


def may_maintain(user: m.User, appliance: m.Appliance) -> bool:
    return (
        user.role is m.Role.ADMIN
        or appliance.owner_id == user.id
        or any(u.id == user.id for u in appliance.maintainers)
    )


VO_HINT = (  # a command to paste: VMI_CATALOGUE and VMI_CATALOGUE_TOKEN as for `invoke publish` (an admin's token)
    'an admin creates it: curl -fsS -H "Authorization: Bearer $VMI_CATALOGUE_TOKEN" -H \'Content-Type: '
    'application/json\' -d \'{{"name": "{name}", "description": "..."}}\' "$VMI_CATALOGUE/api/v1/vos", '
    "or `invoke publish` an appliance listing it under vos: with a sqlite:// or postgresql:// catalogue"
)


def find_appliance(uow: UnitOfWork, name: str) -> m.Appliance:
    found = uow.repo.appliance(name)
    if found is None:
        raise NotFound(
            f"appliance {name!r} is not in the catalogue", hint=f"publish it first: `invoke publish --appliance {name}`"
        )
    return found


def maintained(uow: UnitOfWork, actor: str, name: str) -> tuple[m.User, m.Appliance]:
    user = actor_user(uow, actor)
    appliance = find_appliance(uow, name)
    if not may_maintain(user, appliance):
        raise PermissionDenied(f"{actor} is not a maintainer of appliance {name}")
    return user, appliance


def find_version(uow: UnitOfWork, appliance: m.Appliance, version: str) -> m.Version:
    found = uow.repo.version(appliance, version)
    if found is None:
        raise NotFound(f"{appliance.name} has no version {version!r}")
    return found


def find_vo(uow: UnitOfWork, name: str, for_update: bool = False) -> m.Vo:
    found = uow.repo.vo(name, for_update=for_update)
    if found is None:
        raise NotFound(f"VO {name!r} is not in the catalogue", hint=VO_HINT.format(name=name))
    return found


# --- appliances ------------------------------------------------------------------------------------


def ensure_appliance(uow: UnitOfWork, actor: str, payload: ApplianceRecord) -> AppliancePublic:
    """Create the appliance (owner = actor) or update its title, description and VOs.

    Unknown VOs are created when the actor is an admin, refused otherwise.
    """
    with uow.writing():
        user = actor_user(uow, actor)
        appliance = uow.repo.appliance(payload.name)
        if appliance is None:
            appliance = m.Appliance(name=payload.name, owner_id=user.id, created=utcnow(), maintainers=[], vos=[])
            uow.repo.add(appliance)
            appliance.owner = user
        elif not may_maintain(user, appliance):
            raise PermissionDenied(f"{actor} is not a maintainer of appliance {payload.name}")
        appliance.title = payload.title
        appliance.description = payload.description
        vos = []
        for name in sorted(set(payload.vos)):
            vo = uow.repo.vo(name)
            if vo is None:
                if user.role is not m.Role.ADMIN:
                    raise NotFound(f"VO {name!r} is not in the catalogue", hint=VO_HINT.format(name=name))
                vo = m.Vo(name=name, description="", created=utcnow(), managers=[])
                uow.repo.add(vo)
            vos.append(vo)
        appliance.vos = vos
        try:
            uow.repo.flush()
        except IntegrityError as e:
            raise VersionConflict(f"appliance {payload.name} was created concurrently; retry") from e
        view = views.appliance_view(appliance)
        uow.commit()
        return view


def set_maintainer(uow: UnitOfWork, actor: str, appliance_name: str, user_name: str, present: bool) -> None:
    """Add or remove a maintainer; only the owner or an admin may."""
    with uow.writing():
        user = actor_user(uow, actor)
        appliance = find_appliance(uow, appliance_name)
        if not (user.role is m.Role.ADMIN or appliance.owner_id == user.id):
            raise PermissionDenied(f"only the owner of {appliance_name} or an admin manages its maintainers")
        other = uow.repo.user(user_name)
        if other is None:
            raise NotFound(f"user {user_name!r} does not exist")
        rest = [u for u in appliance.maintainers if u.id != other.id]
        appliance.maintainers = [*rest, other] if present else rest
        uow.commit()


def get_appliance(uow: UnitOfWork, name: str) -> AppliancePublic:
    with uow:
        return views.appliance_view(find_appliance(uow, name))


def list_appliances(uow: UnitOfWork, offset: int, limit: int) -> Paged[AppliancePublic]:
    with uow:
        items = [views.appliance_view(a) for a in uow.repo.appliances(offset, limit)]
        return Paged[AppliancePublic](items=items, total=uow.repo.count_appliances(), offset=offset, limit=limit)


# --- versions --------------------------------------------------------------------------------------


def payload_digest(payload: VersionRecord) -> str:
    """What makes two registrations "the same": every field the client sent, canonically."""
    data = payload.model_dump()
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def image_uri_problem(settings: CatalogueSettings, uri: str) -> str | None:
    """Why the catalogue will not register ``uri``, or None (issue 14, section 4).

    With a repository public base configured (the normal case), only URLs under it are registered:
    that is where publish uploads, and files of a served file repository are hashed by the server
    itself. Without one, only http(s) URLs on public hosts: never file://, credentials, loopback,
    link-local or private addresses, or single-label names (they resolve inside the site).
    """
    base = settings.repository_public_url
    if base:
        if uri.startswith(base.rstrip("/") + "/"):
            return None
        return f"is not under the repository's public URL {base}/ (only published files are registered)"
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    return host_problem(parts.hostname or "")


def host_problem(host: str) -> str | None:
    """Why a host is not a public Internet host, or None: loopback, private, link-local, reserved ..."""
    name = host.lower().rstrip(".")
    try:
        ip = ipaddress.ip_address(name.partition("%")[0])
    except ValueError:
        ip = None
        try:  # the legacy forms resolvers accept: 2130706433, 0x7f.1, 127.1
            if name and all(c in "0123456789abcdefx." for c in name):
                ip = ipaddress.ip_address(socket.inet_aton(name))
        except OSError:
            ip = None
    if ip is not None:
        mapped = getattr(ip, "ipv4_mapped", None)
        if not ip.is_global or (mapped is not None and not mapped.is_global):
            return f"host {host} is not a public address (loopback, private, link-local or reserved)"
        return None
    if name == "localhost" or name.endswith((".localhost", ".local", ".internal")) or "." not in name:
        return f"host {host!r} is not a public DNS name"
    return None


def repository_path(settings: CatalogueSettings, uri: str) -> Path | None:
    """The local file behind ``uri`` when it lies in the served file repository, else None."""
    root, base = settings.repository_root, settings.repository_public_url
    if root is None or not base or not uri.startswith(base.rstrip("/") + "/"):
        return None
    rel = unquote(uri[len(base.rstrip("/")) + 1 :])
    if "\x00" in rel or ".." in Path(rel).parts:
        raise InvalidPayload(f"{uri}: escapes the repository")
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise InvalidPayload(f"{uri}: escapes the repository")
    return path


def _verify_in_repository(settings: CatalogueSettings, i: int, img: ImageCreate) -> Integrity:
    path = repository_path(settings, img.uri)
    if path is None:
        return Integrity.UNCHECKED
    try:
        present = path.is_file()
    except OSError:  # e.g. a name too long for the file system
        present = False
    if not present:
        raise InvalidPayload(f"images.{i}.uri: {img.uri} is not in the repository")
    d = hash_file(path)
    wrong = [
        n
        for n, a, b in (("size", d.size, img.size), ("sha512", d.sha512, img.sha512), ("sha256", d.sha256, img.sha256))
        if a != b
    ]
    if wrong:
        raise InvalidPayload(
            f"images.{i}: {', '.join(wrong)} of {img.uri} differ from the file in the repository",
            hint="the file changed after packaging, or the payload names the wrong file",
        )
    return Integrity.VERIFIED


def image_identifier(appliance: str, img: ImageCreate) -> str:
    """Stable across versions, as cloud sites key appliances by ``dc:identifier``."""
    return str(uuid.uuid5(NAMESPACE, f"image/{appliance}/{img.format}/{img.arch}/{img.hypervisor}"))


def register_version(uow: UnitOfWork, actor: str, payload: VersionRecord, settings: CatalogueSettings) -> VersionPublic:
    """Register a version with its images, in one transaction; idempotent for an identical payload.

    The payload's fields are validated where it was built (the API's body, ``contract.validated``);
    this decides what only the catalogue knows: where images may lie, whether the files match.
    """
    now = utcnow()
    where = f"{payload.appliance} {payload.version}"
    bad = [(i, problem) for i, img in enumerate(payload.images) if (problem := image_uri_problem(settings, img.uri))]
    if bad:
        raise InvalidPayload(
            [f"{where}: images.{i}.uri: {payload.images[i].uri} {problem}" for i, problem in bad],
            hint="publish uploads to the repository and registers its public URLs (`invoke publish`)",
        )
    digest = payload_digest(payload)
    with uow:  # cheap read first: a repeated publish must not hash the files again
        _, appliance = maintained(uow, actor, payload.appliance)
        existing = uow.repo.version(appliance, payload.version)
        if existing is not None:
            return _same_or_conflict(existing, digest)
    integrity = [_verify_in_repository(settings, i, img) for i, img in enumerate(payload.images)]
    expires = min(payload.expires or now + VERSION_LIFETIME, now + VERSION_LIFETIME)
    with uow.writing():
        user, appliance = maintained(uow, actor, payload.appliance)
        existing = uow.repo.version(appliance, payload.version)
        if existing is not None:
            return _same_or_conflict(existing, digest)
        version = m.Version(
            appliance_id=appliance.id,
            version=payload.version,
            identifier=str(uuid.uuid5(NAMESPACE, f"version/{appliance.name}/{payload.version}")),
            notes=payload.notes,
            created=now,
            expires=expires,
            published=True,
            archived=False,
            registered_by_id=user.id,
            payload_digest=digest,
            sbom_sha256=hashlib.sha256(payload.sbom.encode()).hexdigest() if payload.sbom is not None else None,
            base_ref=next((manifest_base_ref(img.manifest) for img in payload.images if img.manifest), None),
            images=[
                _image_row(appliance.name, img, state) for img, state in zip(payload.images, integrity, strict=True)
            ],
            endorsements=[],
        )
        version.appliance = appliance
        uow.repo.add(version)
        try:
            uow.repo.flush()
        except IntegrityError as e:  # a concurrent publish of the same version won the race
            raise VersionConflict(f"{payload.appliance} {payload.version} was registered concurrently; retry") from e
        if payload.sbom is not None:
            uow.repo.add(m.VersionSbom(version_id=version.id, media_type=SBOM_TYPE, data=payload.sbom.encode()))
        info = views.version_info(version)
        uow.commit()
        return info


def _same_or_conflict(existing: m.Version, digest: str) -> VersionPublic:
    if existing.payload_digest != digest:
        raise VersionConflict(
            f"{existing.appliance.name} {existing.version} is already registered with different content",
            hint="versions are immutable: build a new version",
        )
    return views.version_info(existing)


def _image_row(appliance: str, img: ImageCreate, integrity: Integrity) -> m.Image:
    return m.Image(
        identifier=image_identifier(appliance, img),
        uri=img.uri,
        format=img.format,
        hypervisor=img.hypervisor,
        size=img.size,
        sha512=img.sha512,
        sha256=img.sha256,
        arch=img.arch,
        os_family=img.os_family,
        os_name=img.os_name,
        os_version=img.os_version,
        min_cores=img.min_cores,
        recommended_cores=img.recommended_cores,
        min_ram_mb=img.min_ram_mb,
        recommended_ram_mb=img.recommended_ram_mb,
        title=img.title or f"{appliance} ({img.format})",
        integrity=integrity.value,
        manifest=dict(img.manifest) if img.manifest is not None else None,
        locations=list(img.locations) if len(img.locations) > 1 else None,
        packages=[m.ImagePackage(name=p.name, version=p.version, arch=p.arch) for p in img.packages],
    )


def get_version(uow: UnitOfWork, appliance: str, version: str) -> VersionPublic:
    with uow:
        return views.version_info(find_version(uow, find_appliance(uow, appliance), version))


def get_version_with_image_ids(
    uow: UnitOfWork, appliance: str, version: str
) -> tuple[VersionPublic, dict[str, int], str | None]:
    """A version, the catalogue id of each image (by dc:identifier) and its recorded base, for links and lineage."""
    with uow:
        v = find_version(uow, find_appliance(uow, appliance), version)
        return views.version_info(v), {i.identifier: i.id for i in v.images}, v.base_ref


SBOM_TYPE = "application/vnd.cyclonedx+json"


def version_sbom(uow: UnitOfWork, appliance: str, version: str) -> tuple[bytes, str]:
    """(bytes, media type) of a version's SBOM; NotFound if the version has none."""
    with uow:
        v = find_version(uow, find_appliance(uow, appliance), version)
        found = uow.repo.session.get(m.VersionSbom, v.id) if v.sbom_sha256 else None
        if found is None:
            raise NotFound(f"{appliance} {version} has no SBOM in the catalogue")
        return found.data, found.media_type


def list_versions(uow: UnitOfWork, appliance: str, offset: int, limit: int) -> Paged[VersionPublic]:
    with uow:
        found = find_appliance(uow, appliance)
        items = [views.version_info(v) for v in uow.repo.versions(found, offset, limit)]
        return Paged[VersionPublic](items=items, total=uow.repo.count_versions(found), offset=offset, limit=limit)


def list_images(uow: UnitOfWork, offset: int, limit: int) -> Paged[ImagePublic]:
    with uow:
        items = [
            views.image_info(i, i.version.appliance.name, i.version.version) for i in uow.repo.images(offset, limit)
        ]
        return Paged[ImagePublic](items=items, total=uow.repo.count_images(), offset=offset, limit=limit)


def get_image(uow: UnitOfWork, appliance: str, version: str, image_id: int) -> ImageDetailPublic:
    with uow:
        v = find_version(uow, find_appliance(uow, appliance), version)
        image = uow.repo.image_with_packages(v, image_id)
        if image is None:
            raise NotFound(f"{appliance} {version} has no image {image_id}")
        return views.image_detail(image, appliance, version)


@dataclasses.dataclass(frozen=True)
class VersionPage:
    """What the version page shows, read in one unit of work: no package lists, no manifests."""

    appliance: AppliancePublic
    version: VersionPublic
    images: tuple[ImageSummaryPublic, ...]
    audit: AuditPublic | None
    base_ref: str | None = None  # "<appliance>@<version>" of a layered version's base (its lineage)


def version_page(uow: UnitOfWork, appliance: str, version: str) -> VersionPage:
    with uow:
        found = find_appliance(uow, appliance)
        v = find_version(uow, found, version)
        counts = uow.repo.package_counts(v)
        images = tuple(views.image_summary(i, appliance, version, counts.get(i.id, 0)) for i in v.images)
        row = views.shown_audit(uow.repo.audits(v))
        audit = None if row is None else views.audit_view(row)
        return VersionPage(views.appliance_view(found), views.version_info(v), images, audit, v.base_ref)


def version_images(uow: UnitOfWork, appliance: str, version: str) -> list[ImageDetailPublic]:
    """Every image of a version with its packages and manifest (what changed between versions)."""
    with uow:
        v = find_version(uow, find_appliance(uow, appliance), version)
        return [views.image_detail(i, appliance, version) for i in uow.repo.images_with_packages(v)]


def build_record(uow: UnitOfWork, appliance: str, version: str | None = None) -> BuildRecordPublic:
    """A version's build manifest, package list, inputs digest and base version (default: the newest
    version not archived, by version order); ``NotFound`` if there is none or it has no manifest."""
    with uow:
        found = find_appliance(uow, appliance)
        if version is None:
            names = uow.repo.live_version_names(found)
            if not names:
                raise NotFound(f"{appliance} has no published version")
            version = max(names, key=version_sort_key)
        v = find_version(uow, found, version)
        images = uow.repo.build_images(v)
        first = next((i for i in images if i.manifest is not None), None)
        if first is None:
            raise NotFound(f"{appliance} {version} has no build manifest stored")
        packages = [views.package_info(p) for p in first.packages]
        return record_of(views.version_info(v), dict(first.manifest or {}), packages)


# --- audits ----------------------------------------------------------------------------------------


def _audit_checks(report: AuditIn) -> list[m.AuditCheck]:
    """Checks of a validated audit report; a failure that carries a waiver reason counts as waived."""
    rows = []
    for c in report.checks:
        reason = c.reason or c.waiver
        evidence = "\n".join(c.evidence) if isinstance(c.evidence, list) else c.evidence
        result = "waived" if c.result == "fail" and reason else c.result
        rows.append(m.AuditCheck(check_id=c.id, result=result, evidence=evidence, reason=reason))
    return rows


def audit_role(user: m.User, appliance: m.Appliance, managed_vos: int) -> m.AuditRole:
    """In which capacity ``user`` stores an audit; ``PermissionDenied`` if in none.

    Admins and VO managers (endorsers) store audits that can gate endorsement; a maintainer may
    store their own, which is kept and shown but never counts for an endorsement.
    """
    if user.role is m.Role.ADMIN:
        return m.AuditRole.ADMIN
    if managed_vos:
        return m.AuditRole.ENDORSER
    if may_maintain(user, appliance):
        return m.AuditRole.MAINTAINER
    raise PermissionDenied(f"{user.name} is not a maintainer of appliance {appliance.name}, a VO manager or an admin")


def store_audit(uow: UnitOfWork, actor: str, appliance: str, version: str, report: AuditIn) -> AuditPublic:
    """Store the caller's policy audit of a version (replacing the caller's previous one).

    Maintainers, VO managers and admins may; who stored it, and as what, is recorded. Only an
    admin's or a manager's audit of the VO being endorsed gates an endorsement (``endorsements``).
    The report arrives validated (the API's body, the in-process adapter: ``schemas.AuditIn``).
    """
    checks = _audit_checks(report)
    with uow.writing():
        user = actor_user(uow, actor)
        found = find_appliance(uow, appliance)
        role = audit_role(user, found, len(uow.repo.vos_managed_by(user)))
        v = find_version(uow, found, version)
        old = uow.repo.audit_by(v, user)
        if old is not None:
            uow.repo.delete(old)
            uow.repo.flush()
        row = m.AuditReport(
            version_id=v.id,
            stored=utcnow(),
            stored_by_id=user.id,
            stored_as=role.value,
            passed=all(c.result in ("pass", "waived") for c in checks),
            report=report.model_dump(mode="json", exclude_none=True),
            checks=checks,
        )
        uow.repo.add(row)
        uow.repo.flush()
        row.stored_by = user
        view = views.audit_view(row)
        uow.commit()
        return view


def get_audit(uow: UnitOfWork, appliance: str, version: str) -> AuditPublic | None:
    """The audit a reader should see: the newest one that can count (admin, endorser), else the newest."""
    with uow:
        v = find_version(uow, find_appliance(uow, appliance), version)
        row = views.shown_audit(uow.repo.audits(v))
        return None if row is None else views.audit_view(row, with_checks=True)


def expiring(now: datetime, within: timedelta, versions: Sequence[VersionPublic]) -> list[VersionPublic]:
    """Versions that expire within ``within`` (AppDB mailed owners 5 days before; pages flag them)."""
    return [v for v in versions if not v.archived and now <= v.expires <= now + within]
