"""``create_app(settings)``: the catalogue service (REST API, pages, image lists, file repository).

Nothing is built at import time: the engine, session factory and signer are made here, per app.
Domain errors become HTTP responses in one place (``_ERROR_STATUS``); routes stay thin.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from http import HTTPStatus
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.catalogue import endorsements
from pipeline.catalogue.api import appliances, builds, images, users, versions, vos
from pipeline.catalogue.api.deps import AppState, StateDep, UowDep
from pipeline.catalogue.api.query import known_query_only
from pipeline.catalogue.cache import ResponseCache
from pipeline.catalogue.contract import (
    InvalidPayload,
    NotAuthenticated,
    NotEndorsable,
    NotFound,
    PermissionDenied,
    VersionConflict,
)
from pipeline.catalogue.db import make_engine, session_factory
from pipeline.catalogue.pages import apidocs
from pipeline.catalogue.pages import routes as pages
from pipeline.catalogue.schemas import ErrorPublic, Name, error_lines
from pipeline.catalogue.settings import CatalogueSettings
from pipeline.catalogue.signing import load_signer
from pipeline.errors import CatalogueError, PipelineError
from pipeline.log import log

API_PREFIX = "/api/v1"
_ERROR_STATUS: list[tuple[type[CatalogueError], int]] = [
    (NotAuthenticated, 401),
    (PermissionDenied, 403),
    (NotFound, 404),
    (VersionConflict, 409),
    (NotEndorsable, 409),
    (InvalidPayload, 422),
    (CatalogueError, 400),
]
_ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorPublic} for code in (400, 401, 403, 404, 409)
}
REFRESH_SECONDS = 600.0  # how often due VO image lists are re-signed in the background


class SafeJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: an error that quotes a client's string (even a lone surrogate) renders."""

    def render(self, content: object) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def invalid_response(problems: list[str], hint: str | None = None) -> JSONResponse:
    # the shape of FastAPI's own 422s, so clients and the OpenAPI schema see one kind of 422
    detail = [{"loc": ["body"], "msg": p, "type": "value_error"} for p in problems]
    return SafeJSONResponse({"detail": detail, "error": "InvalidPayload", "hint": hint}, status_code=422)


def error_status(exc: CatalogueError) -> int:
    return next(code for cls, code in _ERROR_STATUS if isinstance(exc, cls))


def error_response(exc: CatalogueError) -> JSONResponse:
    """The one mapping from domain errors to HTTP status codes and bodies."""
    status = error_status(exc)
    if isinstance(exc, InvalidPayload):
        return invalid_response(exc.problems, exc.hint)
    body = ErrorPublic(error=type(exc).__name__, detail=exc.message, hint=exc.hint)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return SafeJSONResponse(body.model_dump(), status_code=status, headers=headers)


# Pages use only same-origin styles and links; nothing may frame them (clickjacking). The API docs
# page loads Swagger UI from its CDN and runs one inline script: its route sets its own policy.
PAGE_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class SecurityHeaders:
    """Content-Security-Policy (unless the route set its own), nosniff, Referrer-Policy and
    X-Frame-Options on every response: pages, API, /repo, /vo, static files and errors."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                if b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", PAGE_CSP.encode()))
                headers += [h for h in _SECURITY_HEADERS if h[0] not in names]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimit:
    """Refuse bodies over the configured size (OWASP API4); plain ASGI, no per-request overhead.

    A declared ``Content-Length`` is judged before reading; a chunked body is buffered up to the limit
    and replayed to the app, so neither kind can make the service hold more than ``limit`` bytes.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.limit:
                await self._refuse(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
            if message["type"] != "http.request" or not message.get("more_body"):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = ErrorPublic(error="TooLarge", detail=f"request body over {self.limit} bytes").model_dump()
        await JSONResponse(body, status_code=413)(scope, receive, send)


def repository_file(root: Path | None, key: str) -> Path:
    """The file for ``/repo/<key>``, only if it really lies inside the repository (no ``..``, no symlink out)."""
    if root is None or not key or "\x00" in key:
        raise NotFound("no such file in the repository")
    try:
        base = root.resolve()
        path = (base / key).resolve()
        if path.is_relative_to(base) and path.is_file():
            return path
    except (OSError, ValueError):  # a name too long for the file system, a symlink loop
        pass
    raise NotFound("no such file in the repository")


def public_router() -> APIRouter:
    """Stable URLs outside /api/v1: the signed VO image lists and the file repository."""
    router = APIRouter(tags=["image lists"])

    @router.get(
        "/vo/{vo}/image.list",
        response_class=Response,
        responses={
            200: {"content": {"text/plain": {}}, "description": "the S/MIME signed HEPiX list"},
            304: {"description": "not modified since the list with the ETag in If-None-Match"},
            **_ERROR_RESPONSES,
        },
    )
    def image_list(vo: Name, request: Request, uow: UowDep, state: StateDep) -> Response:
        """The newest signed image list of a VO (re-signed first when it is close to expiry), as stored
        when it was signed; ``ETag``/``If-None-Match`` let sites poll it for the price of a 304."""
        signed, until = endorsements.current_image_list_until(uow, vo, state.ctx)
        etag = '"' + hashlib.sha256(signed).hexdigest()[:32] + '"'
        # the response cache serves these bytes until the next write or until the list is due again
        headers = {"ETag": etag, "Cache-Control": "no-cache", "X-Vmi-Cache-Until": f"{until.timestamp():.0f}"}
        sent = request.headers.get("if-none-match", "")
        if etag in (t.strip().removeprefix("W/") for t in sent.split(",")) or sent.strip() == "*":
            return Response(status_code=304, headers=headers)
        return Response(signed, media_type="text/plain", headers=headers)

    @router.get(
        "/repo/{key:path}",
        response_class=FileResponse,
        responses={200: {"content": {"application/octet-stream": {}}}, 404: {"model": ErrorPublic}},
        tags=["repository"],
    )
    def repository(key: Annotated[str, PathParam(max_length=1024)], state: StateDep) -> FileResponse:
        """Read-only downloads from the file:// repository the pipeline publishes to."""
        return FileResponse(repository_file(state.settings.repository_root, key), media_type="application/octet-stream")

    # HEAD (sites probe sizes) answers like GET without a body; one operation in the OpenAPI description
    router.add_api_route("/vo/{vo}/image.list", image_list, methods=["HEAD"], include_in_schema=False)
    router.add_api_route("/repo/{key:path}", repository, methods=["HEAD"], include_in_schema=False)
    return router


def create_app(settings: CatalogueSettings, refresh_seconds: float | None = REFRESH_SECONDS) -> FastAPI:
    """The service for one database. The schema must be migrated already (``db.migrate``)."""
    engine = make_engine(settings.database_url)
    state = AppState(settings, session_factory(engine), endorsements.Context(settings, load_signer(settings)))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_refresh_loop(state, refresh_seconds)) if refresh_seconds else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
            engine.dispose()

    app = FastAPI(
        title="vmi-pipeline catalogue",
        version="1",
        description="Appliances, versions, images, audits, endorsements and signed VO image lists (after EGI AppDB).",
        lifespan=lifespan,
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=None,  # pages.apidocs serves it from shipped files (no CDN)
        redoc_url=None,
    )

    app.state.catalogue = state
    app.add_middleware(ResponseCache, engine=engine)  # innermost: its 304s still get the headers below
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(CatalogueError)
    async def _domain_error(request: Request, exc: CatalogueError) -> Response:
        if pages.is_page(request):
            return pages.error_page(request, error_status(exc), exc.message, exc.hint)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        if pages.is_page(request):
            return pages.invalid_request_page(request, exc)
        # one line per field, never the input itself (it may not even be encodable)
        detail = [
            {"loc": [str(x) if not isinstance(x, int) else x for x in e.get("loc", ())], "msg": line, "type": e["type"]}
            for e in exc.errors()
            for line in error_lines([e])
        ]
        return SafeJSONResponse({"detail": detail, "error": "InvalidPayload", "hint": None}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # framework errors (unparsable body, unknown route, wrong method) in the documented error shape
        if pages.is_page(request):
            return pages.error_page(request, exc.status_code, "no such page" if exc.status_code == 404 else exc.detail)
        body = ErrorPublic(error=HTTPStatus(exc.status_code).phrase.replace(" ", ""), detail=str(exc.detail))
        return SafeJSONResponse(body.model_dump(), status_code=exc.status_code, headers=exc.headers)

    for module in (appliances, versions, builds, images, vos, users):
        app.include_router(
            module.router, prefix=API_PREFIX, responses=_ERROR_RESPONSES, dependencies=[Depends(known_query_only)]
        )
    app.include_router(public_router())
    app.include_router(pages.router)
    apidocs.install(app, API_PREFIX)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "pages" / "static"), name="static")
    return app


async def _refresh_loop(state: AppState, every: float) -> None:
    from pipeline.catalogue.uow import UnitOfWork

    while True:
        await asyncio.sleep(every)
        try:
            done = await asyncio.to_thread(endorsements.refresh_all_image_lists, UnitOfWork(state.sessions), state.ctx)
            for info in done:
                log.info("re-signed the image list of %s as hv:version %s", info.vo, info.hv_version)
        except PipelineError as e:  # keep serving the current lists; the next round tries again
            log.warning("re-signing image lists failed: %s", e)
