"""Pages: appliances, versions with images, checksums, audits and endorsements, packages, VO lists.

Read-only and public; they call the same use cases as the API.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

from pipeline.catalogue import auth, endorsements, services
from pipeline.catalogue.api.deps import StateDep, UowDep
from pipeline.catalogue.changes import changes_since
from pipeline.catalogue.contract import EXPIRY_WARNING_DAYS, NotFound
from pipeline.catalogue.lineage import lineage_of
from pipeline.catalogue.pages.links import download_url
from pipeline.catalogue.pages.onboarding import SiteSetup, endorser_of
from pipeline.catalogue.settings import LOCAL_ADMIN

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
Name = Annotated[str, PathParam(max_length=64)]
Version = Annotated[str, PathParam(max_length=20)]
IMAGE_ID_MAX = 2**31 - 1  # never beyond what the databases store (as the API's image_id)
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _image_ref(text: str) -> str:
    """A catalogue image id (1 to 2^31-1) or a dc:identifier UUID: anything else is a 422, like the API's ids."""
    if text.isascii() and text.isdigit():
        if not 1 <= int(text) <= IMAGE_ID_MAX:
            raise PydanticCustomError("image_id_range", f"an image id is a whole number from 1 to {IMAGE_ID_MAX}")
        return text
    if not _UUID.fullmatch(text):
        raise PydanticCustomError(
            "image_ref", f"neither an image id (1 to {IMAGE_ID_MAX}) nor an image's dc:identifier (a UUID)"
        )
    return text.lower()


ImageRef = Annotated[str, PathParam(max_length=64), AfterValidator(_image_ref)]
EXPIRY_WARNING = timedelta(days=EXPIRY_WARNING_DAYS)


def serving_base(request: Request) -> str:
    """The scheme, host and port this request came to: links on the page lead back to the same service."""
    return str(request.base_url).rstrip("/")


def _render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, {"now": datetime.now(UTC), **context}, status_code=status)


NOT_PAGES = ("/api/", "/vo/", "/repo/", "/static/")  # machine-readable answers: JSON or files


def is_page(request: Request) -> bool:
    """Whether an error on this path is shown to a person (HTML) rather than to a program (JSON)."""
    return not request.url.path.startswith(NOT_PAGES)


def error_page(request: Request, status: int, message: str, hint: str | None = None) -> HTMLResponse:
    return _render(
        request, "error.html", status=status, title=HTTPStatus(status).phrase, message=message, hint=hint, problems=[]
    )


def invalid_request_page(request: Request, exc: RequestValidationError) -> HTMLResponse:
    """A 422 in words: which part of the address is wrong and why."""
    problems = [
        f"{' '.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg', '')}" for e in exc.errors()
    ]
    return _render(
        request,
        "error.html",
        status=422,
        title="This address is not valid",
        message=f"{request.url.path} does not name a catalogue page",
        hint=None,
        problems=problems,
    )


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
    lineage, until = lineage_of(uow, found.base_ref) or (None, None)
    page = _render(
        request,
        "version.html",
        appliance=found.appliance,
        version=found.version,
        images=[(d, download_url(state.settings, d.image, serving_base(request))) for d in found.images],
        audit=found.audit,
        endorser=endorser_of(state.ctx.signer),
        changes=changes_since(uow, name, version),
        lineage=lineage,
        local_admin=LOCAL_ADMIN,
    )
    if until is not None:  # "outdated" once the base expires, with no write
        page.headers["X-Vmi-Cache-Until"] = str(int(until.timestamp()))
    return page


@router.get("/appliances/{name}/{version}/images/{image}", response_class=HTMLResponse)
def image(
    request: Request, name: Name, version: Version, image: ImageRef, uow: UowDep, state: StateDep
) -> HTMLResponse:
    """One image by its catalogue id or by its dc:identifier (the UUID sites see in the image list)."""
    if image.isdigit():  # checked by ImageRef: an id in range, or else a lower-case UUID
        detail = services.get_image(uow, name, version, int(image))
    else:
        page = services.version_page(uow, name, version)
        ids = [d.id for d in page.images if d.image.identifier == image.lower()]
        if not ids:
            raise NotFound(f"{name} {version} has no image {image}")
        detail = services.get_image(uow, name, version, ids[0])
    return _render(
        request, "image.html", detail=detail, download=download_url(state.settings, detail.image, serving_base(request))
    )


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
    list_url = f"{state.settings.image_list_base}/{vo}/image.list"
    return _render(
        request,
        "vo.html",
        vo=found,
        history=history,
        current=history[0][0] if history else None,
        endorsed=endorsements.endorsed_for(uow, vo),
        list_url=list_url,
        site=SiteSetup.of(vo, list_url, state.ctx.signer),
    )
