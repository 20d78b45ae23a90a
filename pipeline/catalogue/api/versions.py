"""Versions of an appliance: registration, images, audits, archival, endorsements."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from pipeline.catalogue import endorsements, services
from pipeline.catalogue.api.deps import ActorDep, GuardedRoute, PagingDep, StateDep, UowDep
from pipeline.catalogue.contract import NotFound
from pipeline.catalogue.schemas import (
    AuditIn,
    AuditPublic,
    EndorsementCreate,
    ImageDetailPublic,
    ImageListPublic,
    Name,
    Paged,
    VersionCreate,
    VersionPublic,
)

router = APIRouter(prefix="/appliances/{name}/versions", tags=["versions"], route_class=GuardedRoute)
VersionStr = Annotated[str, Path(min_length=1, max_length=20)]


@router.get("")
def list_versions(name: Name, uow: UowDep, paging: PagingDep) -> Paged[VersionPublic]:
    page = services.list_versions(uow, name, paging.offset, paging.limit)
    return Paged[VersionPublic].of(page)


@router.post("", status_code=201)
def register_version(name: Name, body: VersionCreate, uow: UowDep, actor: ActorDep, state: StateDep) -> VersionPublic:
    """Register a version with its images (maintainers only); repeating an identical request is a no-op."""
    info = services.register_version(uow, actor, body.to_payload(name), state.settings)
    return VersionPublic.model_validate(info)


@router.get("/{version}")
def get_version(name: Name, version: VersionStr, uow: UowDep) -> VersionPublic:
    return VersionPublic.model_validate(services.get_version(uow, name, version))


@router.get("/{version}/images/{image_id}")
def get_image(
    name: Name, version: VersionStr, image_id: Annotated[int, Path(ge=1, le=2**31 - 1)], uow: UowDep
) -> ImageDetailPublic:
    """One image with its package list and build manifest."""
    return ImageDetailPublic.model_validate(services.get_image(uow, name, version, image_id))


@router.put("/{version}/audit")
def store_audit(name: Name, version: VersionStr, body: AuditIn, uow: UowDep, actor: ActorDep) -> AuditPublic:
    """Store the policy audit report of a version (replaces the previous one)."""
    report = body.model_dump(mode="json", exclude_none=True)
    return AuditPublic.model_validate(services.store_audit(uow, actor, name, version, report))


@router.get("/{version}/audit")
def get_audit(name: Name, version: VersionStr, uow: UowDep) -> AuditPublic:
    audit = services.get_audit(uow, name, version)
    if audit is None:
        raise NotFound(f"{name} {version} has no stored audit")
    return AuditPublic.model_validate(audit)


@router.post("/{version}/archive")
def archive_version(
    name: Name, version: VersionStr, uow: UowDep, actor: ActorDep, state: StateDep
) -> list[ImageListPublic]:
    """Archive a version; VOs that endorsed it get a new signed image list without it."""
    return [
        ImageListPublic.model_validate(i) for i in endorsements.archive_version(uow, actor, name, version, state.ctx)
    ]


@router.post("/{version}/endorsements", tags=["endorsements"])
def endorse(
    name: Name, version: VersionStr, body: EndorsementCreate, uow: UowDep, actor: ActorDep, state: StateDep
) -> ImageListPublic:
    """Endorse for a VO (its managers only; the stored audit must pass): publishes a new signed list."""
    return ImageListPublic.model_validate(endorsements.endorse(uow, actor, name, version, body.vo, state.ctx))


@router.delete("/{version}/endorsements/{vo}", tags=["endorsements"])
def revoke(name: Name, version: VersionStr, vo: Name, uow: UowDep, actor: ActorDep, state: StateDep) -> ImageListPublic:
    """Revoke an endorsement: publishes a new signed list without the version."""
    return ImageListPublic.model_validate(endorsements.revoke(uow, actor, name, version, vo, state.ctx))
