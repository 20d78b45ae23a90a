"""Use cases of the catalogue: appliances, versions, audits, endorsements and VO image lists.

Each use case takes the acting user's name, primitives or contract payloads and a unit of work; it
checks who may do it, validates like AppDB, writes in one transaction and returns plain views. Domain
errors are the ``CatalogueError`` subclasses in ``contract`` (mapped to HTTP codes in ``app``).
Users, tokens and VOs live in ``auth``; endorsements and signed VO image lists in ``endorsements``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError

from pipeline.catalogue import models as m
from pipeline.catalogue import views
from pipeline.catalogue.contract import (
    AppliancePayload,
    BuildRecord,
    ImageInfo,
    ImagePayload,
    Integrity,
    InvalidPayload,
    NotAuthenticated,
    NotFound,
    PackageInfo,
    PermissionDenied,
    VersionConflict,
    VersionInfo,
    VersionPayload,
    record_of,
)
from pipeline.catalogue.models import utcnow
from pipeline.catalogue.schemas import storable_text
from pipeline.catalogue.settings import VERSION_LIFETIME, CatalogueSettings
from pipeline.catalogue.uow import UnitOfWork
from pipeline.fsutil import hash_file
from pipeline.manifest import version_sort_key

NAMESPACE = uuid.UUID("4f1b8a51-29a4-5c1e-9a57-7b3d0c9e2a10")  # uuid5 namespace of catalogue identifiers
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,19}$")
HEX = {"sha512": re.compile(r"^[0-9a-f]{128}$"), "sha256": re.compile(r"^[0-9a-f]{64}$")}
FORMATS = ("ova", "qcow2", "raw", "vmdk", "vdi", "vhd", "iso")
HYPERVISORS = ("KVM", "QEMU", "QEMU-KVM", "Xen", "VirtualBox", "Hyper-V", "VMWare")
ARCHES = ("x86_64", "aarch64", "i686", "ppc64le", "s390x")
URI_SCHEMES = ("https://", "http://", "s3://", "file://")
AUDIT_RESULTS = ("pass", "fail", "waived")


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


def find_appliance(uow: UnitOfWork, name: str) -> m.Appliance:
    found = uow.repo.appliance(name)
    if found is None:
        raise NotFound(f"appliance {name!r} is not in the catalogue", hint="register it first (ensure_appliance)")
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
        raise NotFound(f"VO {name!r} is not in the catalogue", hint="an admin creates VOs")
    return found


# --- appliances ------------------------------------------------------------------------------------


def _appliance_problems(p: AppliancePayload) -> list[str]:
    problems = []
    if not NAME.match(p.name):
        problems.append(f"name: {p.name!r} must match {NAME.pattern}")
    if not 1 <= len(p.title) <= 200:
        problems.append("title: must be 1..200 characters")
    if not 1 <= len(p.description) <= 5000:
        problems.append("description: must be 1..5000 characters")
    problems += [f"vos: {vo!r} must match {NAME.pattern}" for vo in p.vos if not NAME.match(vo)]
    return problems


def ensure_appliance(uow: UnitOfWork, actor: str, payload: AppliancePayload) -> views.ApplianceView:
    """Create the appliance (owner = actor) or update its title, description and VOs.

    Unknown VOs are created when the actor is an admin, refused otherwise.
    """
    if problems := _appliance_problems(payload) + storable_text(dataclasses.asdict(payload), "payload"):
        raise InvalidPayload([f"appliance {payload.name}: {p}" for p in problems])
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
                    raise NotFound(f"VO {name!r} is not in the catalogue", hint="an admin creates VOs")
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


def get_appliance(uow: UnitOfWork, name: str) -> views.ApplianceView:
    with uow:
        return views.appliance_view(find_appliance(uow, name))


def list_appliances(uow: UnitOfWork, offset: int, limit: int) -> views.Page[views.ApplianceView]:
    with uow:
        items = tuple(views.appliance_view(a) for a in uow.repo.appliances(offset, limit))
        return views.Page(items, uow.repo.count_appliances(), offset, limit)


# --- versions --------------------------------------------------------------------------------------


def payload_digest(payload: VersionPayload) -> str:
    """What makes two registrations "the same": every field the client sent, canonically."""
    data = dataclasses.asdict(payload)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _image_problems(i: int, img: ImagePayload) -> list[str]:
    at = f"images[{i}]"
    problems = []
    if not img.uri.startswith(URI_SCHEMES) or len(img.uri) > 2048 or any(c.isspace() or c < " " for c in img.uri):
        problems.append(f"{at}.uri: must be an {'/'.join(s[:-3] for s in URI_SCHEMES)} URL of at most 2048 characters")
    if img.format not in FORMATS:
        problems.append(f"{at}.format: {img.format!r} is not one of {', '.join(FORMATS)}")
    if img.hypervisor not in HYPERVISORS:
        problems.append(f"{at}.hypervisor: {img.hypervisor!r} is not one of {', '.join(HYPERVISORS)}")
    if img.arch not in ARCHES:
        problems.append(f"{at}.arch: {img.arch!r} is not one of {', '.join(ARCHES)}")
    if not 0 < img.size < 2**62:
        problems.append(f"{at}.size: must be a positive number of bytes")
    for algo, pattern in HEX.items():
        if not pattern.match(getattr(img, algo)):
            problems.append(f"{at}.{algo}: must be {pattern.pattern[3:-4]} lowercase hex digits")
    for low, high in (("min_cores", "recommended_cores"), ("min_ram_mb", "recommended_ram_mb")):
        lo, hi = getattr(img, low), getattr(img, high)
        if not 0 <= lo <= hi <= 2**31 - 1:
            problems.append(f"{at}.{low}/{high}: need 0 <= {low} <= {high}")
    for name in ("os_family", "os_name", "os_version"):
        if not 1 <= len(getattr(img, name)) <= 32:
            problems.append(f"{at}.{name}: must be 1..32 characters")
    if len(img.title) > 200:
        problems.append(f"{at}.title: must be at most 200 characters")
    return problems


def _version_problems(p: VersionPayload, now: datetime) -> list[str]:
    problems = []
    if not VERSION.match(p.version):
        problems.append(f"version: {p.version!r} must be 1..20 characters matching {VERSION.pattern}")
    if not 1 <= len(p.notes) <= 1000:
        problems.append("notes: must be 1..1000 characters")
    if not p.images:
        problems.append("images: a version must contain at least one image")
    seen: set[tuple[str, str]] = set()
    for i, img in enumerate(p.images):
        problems += _image_problems(i, img)
        key = (img.uri, img.hypervisor)
        if key in seen:
            problems.append(f"images[{i}].uri: {img.uri} appears twice (uri + hypervisor must be unique)")
        seen.add(key)
    if p.expires is not None and (p.expires.tzinfo is None or p.expires <= now):
        problems.append("expires: must be a timezone-aware time in the future")
    return problems + storable_text(dataclasses.asdict(p), "payload")


def repository_path(settings: CatalogueSettings, uri: str) -> Path | None:
    """The local file behind ``uri`` when it lies in the served file repository, else None.

    Refuses (``InvalidPayload``) a file URL outside the repository, so a client cannot make the
    server read arbitrary files.
    """
    root = settings.repository_root
    rel: str | None = None
    if root is not None and settings.repository_public_url and uri.startswith(settings.repository_public_url + "/"):
        rel = uri[len(settings.repository_public_url) + 1 :]
    elif uri.startswith("file://"):
        if root is None:
            raise InvalidPayload(f"{uri}: file:// images need a file:// repository on the catalogue side")
        local = Path(uri[len("file://") :])
        if not local.is_absolute():
            raise InvalidPayload(f"{uri}: file:// URLs must be absolute")
        rel = str(local.relative_to(root)) if local.is_relative_to(root) else None
        if rel is None:
            raise InvalidPayload(f"{uri}: is outside the catalogue's repository {root}")
    if rel is None or root is None:
        return None
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()) or ".." in Path(rel).parts:
        raise InvalidPayload(f"{uri}: escapes the repository")
    return path


def _verify_in_repository(settings: CatalogueSettings, i: int, img: ImagePayload) -> Integrity:
    path = repository_path(settings, img.uri)
    if path is None:
        return Integrity.UNCHECKED
    if not path.is_file():
        raise InvalidPayload(f"images[{i}].uri: {img.uri} is not in the repository")
    d = hash_file(path)
    wrong = [
        n
        for n, a, b in (("size", d.size, img.size), ("sha512", d.sha512, img.sha512), ("sha256", d.sha256, img.sha256))
        if a != b
    ]
    if wrong:
        raise InvalidPayload(
            f"images[{i}]: {', '.join(wrong)} of {img.uri} differ from the file in the repository",
            hint="the file changed after packaging, or the payload names the wrong file",
        )
    return Integrity.VERIFIED


def image_identifier(appliance: str, img: ImagePayload) -> str:
    """Stable across versions, as cloud sites key appliances by ``dc:identifier``."""
    return str(uuid.uuid5(NAMESPACE, f"image/{appliance}/{img.format}/{img.arch}/{img.hypervisor}"))


def register_version(uow: UnitOfWork, actor: str, payload: VersionPayload, settings: CatalogueSettings) -> VersionInfo:
    """Register a version with its images, in one transaction; idempotent for an identical payload."""
    now = utcnow()
    if problems := _version_problems(payload, now):
        raise InvalidPayload([f"{payload.appliance} {payload.version}: {p}" for p in problems])
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
        info = views.version_info(version)
        uow.commit()
        return info


def _same_or_conflict(existing: m.Version, digest: str) -> VersionInfo:
    if existing.payload_digest != digest:
        raise VersionConflict(
            f"{existing.appliance.name} {existing.version} is already registered with different content",
            hint="versions are immutable: build a new version",
        )
    return views.version_info(existing)


def _image_row(appliance: str, img: ImagePayload, integrity: Integrity) -> m.Image:
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
        packages=[m.ImagePackage(name=p.name, version=p.version, arch=p.arch) for p in img.packages],
    )


def get_version(uow: UnitOfWork, appliance: str, version: str) -> VersionInfo:
    with uow:
        return views.version_info(find_version(uow, find_appliance(uow, appliance), version))


def list_versions(uow: UnitOfWork, appliance: str, offset: int, limit: int) -> views.Page[VersionInfo]:
    with uow:
        found = find_appliance(uow, appliance)
        items = tuple(views.version_info(v) for v in uow.repo.versions(found, offset, limit))
        return views.Page(items, uow.repo.count_versions(found), offset, limit)


def list_images(uow: UnitOfWork, offset: int, limit: int) -> views.Page[ImageInfo]:
    with uow:
        items = tuple(
            views.image_info(i, i.version.appliance.name, i.version.version) for i in uow.repo.images(offset, limit)
        )
        return views.Page(items, uow.repo.count_images(), offset, limit)


def get_image(uow: UnitOfWork, appliance: str, version: str, image_id: int) -> views.ImageDetail:
    with uow:
        v = find_version(uow, find_appliance(uow, appliance), version)
        image = uow.repo.image_with_packages(v, image_id)
        if image is None:
            raise NotFound(f"{appliance} {version} has no image {image_id}")
        return views.image_detail(image, appliance, version)


def version_images(uow: UnitOfWork, appliance: str, version: str) -> list[views.ImageDetail]:
    """Every image of a version with its packages and manifest (the version page)."""
    with uow:
        v = find_version(uow, find_appliance(uow, appliance), version)
        return [views.image_detail(i, appliance, version) for i in uow.repo.images_with_packages(v)]


def build_record(uow: UnitOfWork, appliance: str, version: str | None = None) -> BuildRecord:
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
        images = uow.repo.images_with_packages(v)
        first = next((i for i in images if i.manifest is not None), None)
        if first is None:
            raise NotFound(f"{appliance} {version} has no build manifest stored")
        packages = [PackageInfo(p.name, p.version, p.arch) for p in first.packages]
        return record_of(views.version_info(v), dict(first.manifest or {}), packages)


# --- audits ----------------------------------------------------------------------------------------


def _audit_checks(report: Mapping[str, Any]) -> list[m.AuditCheck]:
    """Checks of an audit report; a failure that carries a waiver reason counts as waived."""
    if problems := storable_text(dict(report), "audit report"):
        raise InvalidPayload(problems)
    checks = report.get("checks")
    if not isinstance(checks, list) or not checks:
        raise InvalidPayload("audit report: checks: must be a non-empty list")
    rows, problems = [], []
    for i, c in enumerate(checks):
        if not isinstance(c, Mapping):
            problems.append(f"audit report: checks[{i}]: must be an object")
            continue
        cid, result = c.get("id"), c.get("result")
        evidence = c.get("evidence", "")
        reason = c.get("reason") or c.get("waiver")
        if isinstance(evidence, list):
            evidence = "\n".join(str(e) for e in evidence)
        if not isinstance(cid, str) or not cid:
            problems.append(f"audit report: checks[{i}].id: must be a non-empty string")
        if result not in AUDIT_RESULTS:
            problems.append(f"audit report: checks[{i}].result: must be one of {', '.join(AUDIT_RESULTS)}")
        if result == "waived" and not reason:
            problems.append(f"audit report: checks[{i}].reason: a waived check needs a reason")
        if result == "fail" and reason:
            result = "waived"
        rows.append(m.AuditCheck(check_id=str(cid), result=str(result), evidence=str(evidence), reason=reason))
    if problems:
        raise InvalidPayload(problems)
    return rows


def store_audit(
    uow: UnitOfWork, actor: str, appliance: str, version: str, report: Mapping[str, Any]
) -> views.AuditView:
    """Store (replace) the policy audit of a version; maintainers of the appliance only."""
    checks = _audit_checks(report)
    with uow.writing():
        user, found = maintained(uow, actor, appliance)
        v = find_version(uow, found, version)
        old = uow.repo.audit(v)
        if old is not None:
            uow.repo.delete(old)
            uow.repo.flush()
        row = m.AuditReport(
            version_id=v.id,
            stored=utcnow(),
            stored_by_id=user.id,
            passed=all(c.result in ("pass", "waived") for c in checks),
            report=json.loads(json.dumps(report, default=str)),
            checks=checks,
        )
        uow.repo.add(row)
        uow.repo.flush()
        row.stored_by = user
        view = views.audit_view(row)
        uow.commit()
        return view


def get_audit(uow: UnitOfWork, appliance: str, version: str) -> views.AuditView | None:
    with uow:
        v = find_version(uow, find_appliance(uow, appliance), version)
        row = uow.repo.audit(v)
        if row is None:
            return None
        return views.audit_view(row)


def expiring(now: datetime, within: timedelta, versions: Sequence[VersionInfo]) -> list[VersionInfo]:
    """Versions that expire within ``within`` (AppDB mailed owners 5 days before; pages flag them)."""
    return [v for v in versions if not v.archived and now <= v.expires <= now + within]
