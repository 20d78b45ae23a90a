"""The interactive API reference, served from files shipped with the package: no CDN, works offline.

Swagger UI comes from the ``swagger-ui-bundle-v2`` wheel (module ``swagger_ui_bundle``); the page and
its start-up script are ours (no inline script, so a strict Content-Security-Policy can stay on).
Without that wheel the page still lists every operation, rendered here from the OpenAPI description.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

ASSETS = "/docs/assets"  # under the API prefix
BUNDLE_HINT = "pip install swagger-ui-bundle-v2"


# Swagger UI runs only shipped scripts (no inline script, no CDN) but sets inline styles on its widgets.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def swagger_ui_dir() -> Path | None:
    """The folder of Swagger UI's files, or None when the wheel is not installed."""
    try:
        from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return None
    folder = Path(str(swagger_ui_path))
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def operations(openapi: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(tag, METHOD, path, summary) of every documented operation, in document order."""
    rows = []
    for path, item in openapi.get("paths", {}).items():
        for method, op in item.items():
            if method in {"get", "put", "post", "delete", "patch", "head"}:
                tag = (op.get("tags") or ["other"])[0]
                rows.append((tag, method.upper(), path, op.get("summary") or op.get("description", "")))
    return rows


def install(app: FastAPI, prefix: str) -> None:
    """Serve ``{prefix}/docs`` and its assets; call with ``docs_url=None`` on the app."""
    from pipeline.catalogue.pages.routes import templates

    folder = swagger_ui_dir()
    if folder is not None:
        app.mount(prefix + ASSETS, StaticFiles(directory=folder), name="swagger-ui")

    @app.get(prefix + "/docs", include_in_schema=False, response_class=HTMLResponse)
    def api_docs(request: Request) -> HTMLResponse:
        return templates.TemplateResponse(
            request,
            "apidocs.html",
            {
                "openapi_url": app.openapi_url,
                "assets": prefix + ASSETS if folder is not None else None,
                "operations": operations(app.openapi()),
                "title": app.title,
                "hint": BUNDLE_HINT,
            },
            headers={"Content-Security-Policy": DOCS_CSP},
        )
