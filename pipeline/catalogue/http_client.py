"""The ``Catalogue`` over the REST API (``/api/v1``), for a catalogue run elsewhere.

Timeouts on every call; retries with backoff on connection errors and 502/503/504 (safe for every
call here: registration, endorsement and audits are idempotent on the server). Error responses are
mapped back to the same ``CatalogueError`` subclasses the in-process catalogue raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import requests
from pydantic import TypeAdapter
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from pipeline.catalogue import contract
from pipeline.catalogue.contract import (
    AppliancePayload,
    BuildRecord,
    CascadeInfo,
    ImageInfo,
    ImageListInfo,
    VersionInfo,
    VersionPayload,
)
from pipeline.errors import CatalogueError

TIMEOUT = (5, 300)  # connect, read: registering hashes repository files on the server
_ERRORS: dict[str, type[CatalogueError]] = {
    cls.__name__: cls
    for cls in (
        contract.NotFound,
        contract.PermissionDenied,
        contract.NotAuthenticated,
        contract.VersionConflict,
        contract.NotEndorsable,
    )
}
_BY_STATUS: dict[int, type[CatalogueError]] = {
    401: contract.NotAuthenticated,
    403: contract.PermissionDenied,
    404: contract.NotFound,
    409: contract.VersionConflict,
}
_VERSIONS = TypeAdapter(list[VersionInfo])
_IMAGES = TypeAdapter(list[ImageInfo])


def payload_json(payload: VersionPayload) -> dict[str, Any]:
    """The request body of ``POST .../versions``: the payload without the appliance (it is in the path)."""
    return payload.model_dump(mode="json", exclude={"appliance"})


def _problems(detail: object) -> list[str]:
    """One line per problem from a 422 body (the catalogue's and FastAPI's share this shape)."""
    if not isinstance(detail, list):
        return [str(detail)]
    lines = []
    for item in detail:
        if isinstance(item, dict):
            loc = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
            lines.append(f"{loc}: {item.get('msg')}" if loc else str(item.get("msg")))
        else:
            lines.append(str(item))
    return lines


class HttpCatalogue:
    def __init__(self, base_url: str, token: str | None, session: requests.Session | None = None) -> None:
        self.base = base_url.rstrip("/")
        self.http = session or requests.Session()
        retry = Retry(total=5, backoff_factor=0.5, status_forcelist=(502, 503, 504), allowed_methods=None)
        self.http.mount("http://", HTTPAdapter(max_retries=retry))
        self.http.mount("https://", HTTPAdapter(max_retries=retry))
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"

    def _call(self, method: str, path: str, **kw: Any) -> requests.Response:
        url = f"{self.base}{path}"
        try:
            response = self.http.request(method, url, timeout=TIMEOUT, **kw)
        except requests.RequestException as e:
            raise CatalogueError(f"catalogue {self.base} is unreachable: {e}") from e
        if response.status_code < 400:
            return response
        try:
            body = response.json()
        except ValueError:
            body = {}
        detail = body.get("detail") if isinstance(body, dict) else None
        name = body.get("error", "") if isinstance(body, dict) else ""
        if response.status_code == 422:
            raise contract.InvalidPayload(_problems(detail), hint=body.get("hint") if isinstance(body, dict) else None)
        cls = _ERRORS.get(name) or _BY_STATUS.get(response.status_code, CatalogueError)
        text = detail if isinstance(detail, str) else f"HTTP {response.status_code} from {method} {url}"
        raise cls(text, hint=body.get("hint") if isinstance(body, dict) else None)

    @staticmethod
    def _v(appliance: str, version: str | None = None) -> str:
        path = f"/api/v1/appliances/{quote(appliance, safe='')}"
        return path if version is None else f"{path}/versions/{quote(version, safe='')}"

    def ensure_appliance(self, payload: AppliancePayload) -> None:
        self._call("PUT", self._v(payload.name), json=payload.model_dump(mode="json", exclude={"name"}))

    def get_version(self, appliance: str, version: str) -> VersionInfo | None:
        try:
            return VersionInfo.model_validate(self._call("GET", self._v(appliance, version)).json())
        except contract.NotFound:
            return None

    def register_version(self, payload: VersionPayload) -> VersionInfo:
        response = self._call("POST", self._v(payload.appliance) + "/versions", json=payload_json(payload))
        return VersionInfo.model_validate(response.json())

    def _pages(self, path: str) -> list[Any]:
        items: list[Any] = []
        while True:
            page = self._call("GET", path, params={"offset": len(items), "limit": 500}).json()
            items += page["items"]
            if len(items) >= page["total"] or not page["items"]:
                return items

    def list_versions(self, appliance: str) -> list[VersionInfo]:
        return _VERSIONS.validate_python(self._pages(self._v(appliance) + "/versions"))

    def list_images(self) -> list[ImageInfo]:
        return _IMAGES.validate_python(self._pages("/api/v1/images"))

    def store_audit(self, appliance: str, version: str, report: Mapping[str, Any]) -> None:
        self._call("PUT", self._v(appliance, version) + "/audit", json=dict(report))

    def endorse(self, appliance: str, version: str, vo: str) -> ImageListInfo:
        response = self._call("POST", self._v(appliance, version) + "/endorsements", json={"vo": vo})
        return ImageListInfo.model_validate(response.json())

    def revoke(self, appliance: str, version: str, vo: str) -> ImageListInfo:
        response = self._call("DELETE", self._v(appliance, version) + f"/endorsements/{quote(vo, safe='')}")
        return ImageListInfo.model_validate(response.json())

    def revoke_cascade(self, appliance: str, version: str, vo: str) -> CascadeInfo:
        path = self._v(appliance, version) + f"/endorsements/{quote(vo, safe='')}/cascade-revoke"
        return CascadeInfo.model_validate(self._call("POST", path).json())

    def archive_version(self, appliance: str, version: str) -> None:
        self._call("POST", self._v(appliance, version) + "/archive")

    def image_list(self, vo: str) -> bytes:
        return self._call("GET", f"/vo/{quote(vo, safe='')}/image.list").content

    def build_record(self, appliance: str, version: str | None = None) -> BuildRecord | None:
        path = self._v(appliance) + ("/build" if version is None else f"/versions/{quote(version, safe='')}/build")
        try:
            return BuildRecord.model_validate(self._call("GET", path).json())
        except contract.NotFound:
            return None

    def close(self) -> None:
        self.http.close()
