"""Versions of an appliance: registration, images, audits, archival, endorsements."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response

from pipeline.catalogue import endorsements, services
from pipeline.catalogue.api.deps import ActorDep, GuardedRoute, PagingDep, StateDep, UowDep
from pipeline.catalogue.changes import changes_since
from pipeline.catalogue.contract import NotFound
from pipeline.catalogue.lineage import lineage_of
from pipeline.catalogue.pages.links import download_url
from pipeline.catalogue.pages.routes import serving_base
from pipeline.catalogue.schemas import (
    AuditIn,
    AuditPublic,
    CascadePublic,
    EndorsementCreate,
    ImageDetailPublic,
    ImageLinks,
    ImageListPublic,
    Name,
    Paged,
    VersionCreate,
    VersionDetailPublic,
    VersionImagePublic,
    VersionLinks,
    VersionPublic,
)

router = APIRouter(prefix="/appliances/{name}/versions", tags=["versions"], route_class=GuardedRoute)
API = "/api/v1"  # links are paths: they follow whatever host and port serve the catalogue
VersionStr = Annotated[str, Path(min_length=1, max_length=20)]


@router.get("")
def list_versions(name: Name, uow: UowDep, paging: PagingDep) -> Paged[VersionPublic]:
    return services.list_versions(uow, name, paging.offset, paging.limit)


@router.post("", status_code=201)
def register_version(name: Name, body: VersionCreate, uow: UowDep, actor: ActorDep, state: StateDep) -> VersionPublic:
    """Register a version with its images (maintainers only); repeating an identical request is a no-op."""
    return services.register_version(uow, actor, body.for_appliance(name), state.settings)


@router.get("/{version}")
def get_version(
    name: Name, version: VersionStr, uow: UowDep, state: StateDep, request: Request, response: Response
) -> VersionDetailPublic:
    """One version; each image carries its id and links to its packages, manifest, page and download."""
    info, ids, base_ref = services.get_version_with_image_ids(uow, name, version)
    api = f"{API}/appliances/{name}"
    base = f"{api}/versions/{info.version}"
    page = f"/appliances/{name}/{info.version}"
    images = [
        VersionImagePublic.model_validate(
            {
                **image.model_dump(),
                "id": ids[image.identifier],
                "links": ImageLinks(
                    self=f"{base}/images/{ids[image.identifier]}",
                    page=f"{page}/images/{ids[image.identifier]}",
                    download=download_url(state.settings, image, serving_base(request)),
                ),
            }
        )
        for image in info.images
    ]
    public = info.model_dump(exclude={"images"})
    links = VersionLinks(
        self=base,
        page=page,
        appliance=api,
        audit=f"{base}/audit",
        versions=f"{api}/versions",
        changes=f"{base}/changes",
        sbom=f"{base}/sbom" if info.sbom_sha256 else None,
    )
    lineage, until = lineage_of(uow, base_ref) or (None, None)
    if until is not None:  # outdated once the base expires, with no write
        response.headers["X-Vmi-Cache-Until"] = str(int(until.timestamp()))
    return VersionDetailPublic(**public, images=images, links=links, lineage=lineage)


@router.get(
    "/{version}/sbom",
    response_class=Response,
    responses={200: {"content": {services.SBOM_TYPE: {}}, "description": "the CycloneDX JSON SBOM, as published"}},
)
def get_sbom(name: Name, version: VersionStr, uow: UowDep) -> Response:
    """The version's CycloneDX SBOM, byte for byte as published (404 when none is stored)."""
    data, media_type = services.version_sbom(uow, name, version)
    disposition = f'attachment; filename="{name}-{version}.cdx.json"'
    return Response(data, media_type=media_type, headers={"Content-Disposition": disposition})


@router.get("/{version}/images/{image_id}")
def get_image(
    name: Name, version: VersionStr, image_id: Annotated[int, Path(ge=1, le=2**31 - 1)], uow: UowDep
) -> ImageDetailPublic:
    """One image with its package list and build manifest."""
    return services.get_image(uow, name, version, image_id)


@router.get("/{version}/changes")
def get_changes(
    name: Name,
    version: VersionStr,
    uow: UowDep,
    since: Annotated[
        str | None, Query(min_length=1, max_length=20, description="default: the previous version")
    ] = None,
) -> dict[str, Any]:
    """What changed since another version: packages, audit results, build inputs and base.

    Changelog entries need the image: `invoke diff --appliance NAME OLD NEW` reads them where it was built.
    """
    found = changes_since(uow, name, version, since)
    if found is None:
        raise NotFound(f"{name} {version} is the first version: nothing to compare with")
    return found.to_dict()


@router.put("/{version}/audit")
def store_audit(name: Name, version: VersionStr, body: AuditIn, uow: UowDep, actor: ActorDep) -> AuditPublic:
    """Store the policy audit report of a version (replaces the previous one)."""
    return services.store_audit(uow, actor, name, version, body)


@router.get("/{version}/audit")
def get_audit(name: Name, version: VersionStr, uow: UowDep) -> AuditPublic:
    audit = services.get_audit(uow, name, version)
    if audit is None:
        raise NotFound(f"{name} {version} has no stored audit")
    return audit


@router.post("/{version}/archive")
def archive_version(
    name: Name, version: VersionStr, uow: UowDep, actor: ActorDep, state: StateDep
) -> list[ImageListPublic]:
    """Archive a version; VOs that endorsed it get a new signed image list without it."""
    return endorsements.archive_version(uow, actor, name, version, state.ctx)


@router.post("/{version}/endorsements", tags=["endorsements"])
def endorse(
    name: Name, version: VersionStr, body: EndorsementCreate, uow: UowDep, actor: ActorDep, state: StateDep
) -> ImageListPublic:
    """Endorse for a VO (its managers only; the stored audit must pass): publishes a new signed list."""
    return endorsements.endorse(uow, actor, name, version, body.vo, state.ctx)


@router.delete("/{version}/endorsements/{vo}", tags=["endorsements"])
def revoke(name: Name, version: VersionStr, vo: Name, uow: UowDep, actor: ActorDep, state: StateDep) -> ImageListPublic:
    """Revoke an endorsement: publishes a new signed list without the version."""
    return endorsements.revoke(uow, actor, name, version, vo, state.ctx)


@router.post("/{version}/endorsements/{vo}/cascade-revoke", tags=["endorsements"])
def revoke_cascade(
    name: Name, version: VersionStr, vo: Name, uow: UowDep, actor: ActorDep, state: StateDep
) -> CascadePublic:
    """Revoke an endorsement and those of every version layered on this one, in every VO where they are
    endorsed (an admin, or a manager of each VO): each VO list is re-signed once."""
    return endorsements.revoke_cascade(uow, actor, name, version, vo, state.ctx)
