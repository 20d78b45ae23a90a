"""Lists and pages are read with a fixed number of queries whatever their length (issue 15): every
relation a view needs is loaded for the whole page at once, never lazily per row, and list views never
read package lists or manifests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from pipeline.catalogue import endorsements, services
from pipeline.catalogue.contract import ImagePayload, PackageInfo, VersionPayload
from pipeline.catalogue.schemas import AuditIn
from tests.catalogue.conftest import PASSING_AUDIT, Api

VO = "vo.example.org"
PATHS = (
    "/api/v1/appliances/debian-12/versions?limit=50",
    "/api/v1/images?limit=100",
    "/api/v1/appliances",
    "/api/v1/vos",
    f"/api/v1/vos/{VO}/image-lists",
    f"/vo/{VO}/image.list",
    "/",
    "/appliances/debian-12",
    "/appliances/debian-12/1",
    "/vos",
    f"/vos/{VO}",
)


@contextmanager
def statements() -> Iterator[list[str]]:
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", record)


def _add(api: Api, make: Callable[..., ImagePayload], version: str) -> None:
    packages = [PackageInfo(name=f"pkg{i}", version="1.0", arch="amd64") for i in range(30)]
    images = tuple(
        make("debian-12", version, fmt).model_copy(update={"packages": packages, "manifest": {"big": "x" * 1000}})
        for fmt in ("ova", "qcow2")
    )
    services.register_version(
        api.uow, "alice", VersionPayload(appliance="debian-12", version=version, notes="v", images=images), api.settings
    )
    services.store_audit(api.uow, "admin", "debian-12", version, AuditIn.model_validate(PASSING_AUDIT))
    endorsements.endorse(api.uow, "mia", "debian-12", version, VO, api.client.app.state.catalogue.ctx)


def _counts(api: Api) -> dict[str, list[str]]:
    found = {}
    for path in PATHS:
        with statements() as seen:
            r = api.client.get(path, headers={"Cache-Control": "no-cache"})
        assert r.status_code == 200, (path, r.text[:200])
        found[path] = [s for s in seen if not s.startswith(("BEGIN", "SELECT generation"))]
    return found


@pytest.mark.parametrize(
    "database_url", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_queries_per_list_do_not_grow_with_its_length(
    signing_api: Api, publish_file: Callable[..., ImagePayload]
) -> None:
    api = signing_api
    for v in range(1, 3):
        _add(api, publish_file, str(v))
    few = _counts(api)
    for v in range(3, 13):
        _add(api, publish_file, str(v))
    many = _counts(api)  # each write made the cache stale: these are fresh reads
    assert {p: len(q) for p, q in many.items()} == {p: len(q) for p, q in few.items()}
    for path, queries in many.items():
        text = " ".join(queries)
        assert "image_packages.name" not in text, f"{path} reads package lists"
        if path != f"/vo/{VO}/image.list":
            assert "images.manifest" not in text, f"{path} reads manifests"
