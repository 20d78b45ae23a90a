"""Pages: appliances, versions with images, checksums, audits and endorsements, packages, VO lists.

Read-only and public; they call the same use cases as the API.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from pipeline.catalogue import auth, endorsements, services
from pipeline.catalogue.api.deps import StateDep, UowDep
from pipeline.catalogue.contract import EXPIRY_WARNING_DAYS, ImageInfo, NotFound
from pipeline.catalogue.settings import CatalogueSettings

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
Name = Annotated[str, PathParam(max_length=64)]
Version = Annotated[str, PathParam(max_length=20)]
ImageId = Annotated[int, PathParam(ge=1, le=2**31 - 1)]  # never beyond what the databases store
EXPIRY_WARNING = timedelta(days=EXPIRY_WARNING_DAYS)


def download_url(settings: CatalogueSettings, image: ImageInfo) -> str | None:
    """Where a browser can fetch the image: http(s) as is, file:// repository files via /repo/."""
    if image.uri.startswith(("https://", "http://")):
        return image.uri
    root = settings.repository_root
    if image.uri.startswith("file://") and root is not None:
        local = Path(image.uri[len("file://") :])
        if local.is_relative_to(root):
            return f"{settings.public_url}/repo/{local.relative_to(root)}"
    return None


def _render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, {"now": datetime.now(UTC), **context}, status_code=status)


def not_found_page(request: Request, message: str) -> HTMLResponse:
    return _render(request, "error.html", status=404, message=message)


@router.get("/", response_class=HTMLResponse)
def index(request: Request, uow: UowDep) -> HTMLResponse:
    page = services.list_appliances(uow, 0, 500)
    return _render(request, "index.html", appliances=page.items, total=page.total)


@router.get("/appliances/{name}", response_class=HTMLResponse)
def appliance(request: Request, name: Name, uow: UowDep) -> HTMLResponse:
    found = services.get_appliance(uow, name)
    page = services.list_versions(uow, name, 0, 500)
    soon = {v.version for v in services.expiring(datetime.now(UTC), EXPIRY_WARNING, page.items)}
    return _render(request, "appliance.html", appliance=found, versions=page.items, expiring=soon)


@router.get("/appliances/{name}/{version}", response_class=HTMLResponse)
def version(request: Request, name: Name, version: Version, uow: UowDep, state: StateDep) -> HTMLResponse:
    found = services.version_page(uow, name, version)
    return _render(
        request,
        "version.html",
        appliance=found.appliance,
        version=found.version,
        images=[(d, download_url(state.settings, d.image)) for d in found.images],
        audit=found.audit,
    )


@router.get("/appliances/{name}/{version}/images/{image_id}", response_class=HTMLResponse)
def image(
    request: Request, name: Name, version: Version, image_id: ImageId, uow: UowDep, state: StateDep
) -> HTMLResponse:
    detail = services.get_image(uow, name, version, image_id)
    return _render(request, "image.html", detail=detail, download=download_url(state.settings, detail.image))


@router.get("/vos", response_class=HTMLResponse)
def vo_index(request: Request, uow: UowDep) -> HTMLResponse:
    return _render(request, "vos.html", vos=auth.list_vos(uow, 0, 500).items)


@router.get("/vos/{vo}", response_class=HTMLResponse)
def vo(request: Request, vo: Name, uow: UowDep, state: StateDep) -> HTMLResponse:
    found = auth.get_vo(uow, vo)
    try:
        history = endorsements.image_list_history(uow, vo, state.ctx)
    except NotFound:
        history = []
    return _render(
        request,
        "vo.html",
        vo=found,
        history=history,
        endorsed=endorsements.endorsed_for(uow, vo),
        list_url=f"{state.settings.image_list_base}/{vo}/image.list",
    )
