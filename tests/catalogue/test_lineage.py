"""Issue 12 item 2: lineage. Revoking or expiring a base version marks the versions layered on it
"outdated" (API, pages); ``revoke --cascade`` withdraws them too, in every VO, one signed list per VO.

Runs on SQLite and on the real PostgreSQL; lists are signed with a real throwaway CA and verified as a
site does (``pipeline.site.verify``, ``openssl smime -verify``). The page test drives headless Chromium.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

import pytest
from playwright.sync_api import Browser, expect

from pipeline.catalogue import auth, endorsements, services
from pipeline.catalogue.contract import (
    AppliancePayload,
    ImagePayload,
    NotFound,
    PermissionDenied,
    RevokedEndorsement,
    VersionPayload,
)
from pipeline.catalogue.http_client import payload_json
from pipeline.catalogue.inprocess import InProcessCatalogue, make_context
from pipeline.site.verify import verify_image_list
from tests.catalogue.conftest import PASSING_AUDIT, Api, LiveServer, served_image
from tests.catalogue.test_pages import browser  # noqa: F401 -- the headless Chromium fixture

VO, OTHER = "vo.example.org", "other.vo"
N = "2026.11.22"  # the base version everything here is layered on


def _base(ref: str) -> dict[str, object]:
    return {"base": {"kind": "appliance", "ref": ref, "digest": "sha256:" + "0" * 64}}


def _layered(
    api: Api, make: Callable[..., ImagePayload], appliance: str, version: str, on: str, expires: datetime | None = None
) -> None:
    """Register ``appliance`` ``version`` (two images) built on ``on`` (``name@version``), as alice."""
    body = {"title": appliance, "description": f"layered on {on}", "vos": []}
    assert api.client.put(f"/api/v1/appliances/{appliance}", json=body, headers=api.headers("alice")).status_code == 200
    images = tuple(make(appliance, version, fmt, manifest=_base(on)) for fmt in ("ova", "qcow2"))
    payload = VersionPayload(
        appliance=appliance, version=version, notes=f"{appliance} on {on}", images=images, expires=expires
    )
    r = api.client.post(
        f"/api/v1/appliances/{appliance}/versions", json=payload_json(payload), headers=api.headers("alice")
    )
    assert r.status_code == 201, r.text


def _endorse(api: Api, appliance: str, version: str, *vos: str) -> None:
    path = f"/api/v1/appliances/{appliance}/versions/{version}"
    assert api.client.put(f"{path}/audit", json=PASSING_AUDIT, headers=api.headers("admin")).status_code == 200
    for vo in vos:
        r = api.client.post(f"{path}/endorsements", json={"vo": vo}, headers=api.headers("admin"))
        assert r.status_code == 200, r.text


def _served(api: Api, vo: str, dev_ca: Path, tmp_path: Path) -> tuple[int, set[tuple[str, str]]]:
    """The VO's served list verified as a site does: its hv:version and the (appliance, version) it lists."""
    signed = api.client.get(f"/vo/{vo}/image.list").content
    path = tmp_path / f"{vo}-{time.monotonic_ns()}.list"
    path.write_bytes(signed)
    report = verify_image_list(path, dev_ca / "ca.pem")
    listed = {tuple(urlparse(i.uri).path.split("/")[2:4]) for i in report.images}  # /repo/<appliance>/<version>/
    return int(report.version), listed  # type: ignore[return-value]


def _history(api: Api, vo: str) -> list[int]:
    return [i["hv_version"] for i in api.client.get(f"/api/v1/vos/{vo}/image-lists").json()]


@pytest.fixture
def family(
    signing_api: Api, publish_file: Callable[..., ImagePayload], version_payload: Callable[..., VersionPayload]
) -> Iterator[Api]:
    """debian-12 N endorsed for VO; science (on N) for VO and OTHER; gpu (on science) for OTHER;
    centos-7 1.0 (unrelated) for VO."""
    api = signing_api
    r = api.client.post(
        "/api/v1/appliances/debian-12/versions", json=payload_json(version_payload()), headers=api.headers("alice")
    )
    assert r.status_code == 201, r.text
    _layered(api, publish_file, "science", "2026.11.23", f"debian-12@{N}")
    _layered(api, publish_file, "gpu", "2026.11.24", "science@2026.11.23")
    centos = VersionPayload(
        appliance="centos-7", version="1.0", notes="unrelated", images=(publish_file("centos-7", "1.0", "qcow2"),)
    )
    services.register_version(api.uow, "admin", centos, api.settings)
    _endorse(api, "debian-12", N, VO)
    _endorse(api, "science", "2026.11.23", VO, OTHER)
    _endorse(api, "gpu", "2026.11.24", OTHER)
    _endorse(api, "centos-7", "1.0", VO)
    yield api


def test_cascade_revokes_the_descendants_in_every_vo_and_signs_each_list_once(
    family: Api, dev_ca: Path, tmp_path: Path
) -> None:
    api = family
    before = {vo: _served(api, vo, dev_ca, tmp_path) for vo in (VO, OTHER)}
    assert before[VO][1] == {("debian-12", N), ("science", "2026.11.23"), ("centos-7", "1.0")}
    assert before[OTHER][1] == {("science", "2026.11.23"), ("gpu", "2026.11.24")}
    history = {vo: _history(api, vo) for vo in (VO, OTHER)}
    cascade = f"/api/v1/appliances/debian-12/versions/{N}/endorsements/{VO}/cascade-revoke"

    # mia manages VO but not OTHER, where science and gpu are endorsed: refused, and nothing changed
    denied = api.client.post(cascade, headers=api.headers("mia"))
    assert denied.status_code == 403, denied.text
    assert denied.json()["detail"] == (
        f"mia is not a manager of VO {OTHER}, where versions layered on debian-12 {N} are endorsed: nothing was revoked"
    )
    assert {vo: _history(api, vo) for vo in (VO, OTHER)} == history
    assert api.client.get("/api/v1/appliances/science/versions/2026.11.23").json()["lineage"]["outdated"] is False

    done = api.client.post(cascade, headers=api.headers("admin"))
    assert done.status_code == 200, done.text
    assert [(r["appliance"], r["version"], r["vo"]) for r in done.json()["revoked"]] == [
        ("debian-12", N, VO),
        ("science", "2026.11.23", VO),
        ("science", "2026.11.23", OTHER),
        ("gpu", "2026.11.24", OTHER),
    ]
    # one new signed list per VO, not one per revoked endorsement
    for vo in (VO, OTHER):
        assert _history(api, vo)[1:] == history[vo], vo
    lists = {i["vo"]: i["hv_version"] for i in done.json()["image_lists"]}
    assert sorted(lists) == [OTHER, VO]
    after = {vo: _served(api, vo, dev_ca, tmp_path) for vo in (VO, OTHER)}
    for vo in (VO, OTHER):
        assert after[vo][0] == lists[vo] > before[vo][0]
    assert after[VO][1] == {("centos-7", "1.0")} and after[OTHER][1] == set()

    # both layers are outdated now: science's base is revoked, and so is gpu's (science, everywhere)
    science = api.client.get("/api/v1/appliances/science/versions/2026.11.23").json()["lineage"]
    assert science == {
        "base_appliance": "debian-12", "base_version": N, "outdated": True,
        "reason": f"debian-12 {N} is revoked ({VO})",
    }  # fmt: skip
    gpu = api.client.get("/api/v1/appliances/gpu/versions/2026.11.24").json()["lineage"]
    assert gpu["outdated"] and gpu["reason"] == f"science 2026.11.23 is revoked ({OTHER}, {VO})"

    again = api.client.post(cascade, headers=api.headers("admin"))
    assert again.status_code == 404 and "the 2 version(s) layered on it are not endorsed" in again.json()["detail"]
    assert {vo: len(_history(api, vo)) for vo in (VO, OTHER)} == {vo: len(history[vo]) + 1 for vo in (VO, OTHER)}


def test_cascade_in_process_as_invoke_endorse_runs_it(family: Api, dev_ca: Path, tmp_path: Path) -> None:
    """The in-process catalogue (a database URL in ``vmi.catalogue``) acts as the local admin."""
    api = family
    catalogue = InProcessCatalogue(api.settings)
    try:
        with pytest.raises(NotFound, match="was never endorsed for other.vo"):
            catalogue.revoke_cascade("debian-12", N, OTHER)
        catalogue.revoke("debian-12", N, VO)  # revoked alone first: the cascade still reaches its descendants
        before = {vo: len(_history(api, vo)) for vo in (VO, OTHER)}
        done = catalogue.revoke_cascade("debian-12", N, VO)
    finally:
        catalogue.close()
    assert done.revoked == [
        RevokedEndorsement(appliance="science", version="2026.11.23", vo=VO),
        RevokedEndorsement(appliance="science", version="2026.11.23", vo=OTHER),
        RevokedEndorsement(appliance="gpu", version="2026.11.24", vo=OTHER),
    ]
    assert {vo: len(_history(api, vo)) for vo in (VO, OTHER)} == {VO: before[VO] + 1, OTHER: before[OTHER] + 1}
    assert _served(api, OTHER, dev_ca, tmp_path)[1] == set()


def test_a_manager_of_every_vo_concerned_may_cascade(family: Api) -> None:
    api = family
    auth.set_vo_manager(api.uow, "admin", OTHER, "mia", present=True)
    ctx = make_context(api.settings)
    done = endorsements.revoke_cascade(api.uow, "mia", "science", "2026.11.23", OTHER, ctx)
    # science for VO stays endorsed (revoked only for OTHER); gpu, layered on it, is revoked everywhere
    assert [(r.appliance, r.vo) for r in done.revoked] == [("science", OTHER), ("gpu", OTHER)]
    assert [i.vo for i in done.image_lists] == [OTHER]
    with pytest.raises(PermissionDenied, match="bob is not a manager of VO vo.example.org"):
        endorsements.revoke_cascade(api.uow, "bob", "debian-12", N, VO, ctx)


def test_an_expiring_base_makes_its_descendants_outdated_without_any_write(
    api: Api, publish_file: Callable[..., ImagePayload]
) -> None:
    """No write happens when a version expires: the cached version JSON must not outlive the base's expiry."""
    expires = datetime.now(UTC) + timedelta(seconds=3)
    base = VersionPayload(
        appliance="debian-12",
        version=N,
        notes="short-lived",
        images=(publish_file("debian-12", N, "qcow2"),),
        expires=expires,
    )
    assert api.client.post(
        "/api/v1/appliances/debian-12/versions", json=payload_json(base), headers=api.headers("alice")
    ).status_code == 201  # fmt: skip
    _layered(api, publish_file, "science", "2026.11.23", f"debian-12@{N}")
    path = "/api/v1/appliances/science/versions/2026.11.23"
    first = api.client.get(path)
    assert first.json()["lineage"]["outdated"] is False and "x-vmi-cache-until" not in first.headers
    assert api.client.get(path, headers={"If-None-Match": first.headers["etag"]}).status_code == 304  # cached
    deadline = time.monotonic() + 30
    while api.client.get(path).json()["lineage"]["outdated"] is False:
        assert time.monotonic() < deadline, "the base expired, yet the version JSON still says current"
        time.sleep(0.5)
    lineage = api.client.get(path).json()["lineage"]
    assert lineage["reason"] == f"debian-12 {N} expired on {expires:%Y-%m-%d}"
    assert datetime.now(UTC) >= expires
    page = api.client.get("/appliances/science/2026.11.23").text
    assert f"debian-12 {N} expired on {expires:%Y-%m-%d}: rebuild it on a current base" in page


def _file_image(server: LiveServer, name: str, version: str, fmt: str, on: str | None) -> ImagePayload:
    return served_image(server, name, version, fmt, _base(on) if on else None)


def _seed_family(server: LiveServer) -> None:
    """debian-12 N and science on it, both endorsed for VO, then N revoked with --cascade: through the
    in-process catalogue, as `invoke publish` and `invoke endorse` do with a database URL (the local admin)."""
    catalogue = InProcessCatalogue(server.settings)
    try:
        for name, version, on in (("debian-12", N, None), ("science", "2026.11.23", f"debian-12@{N}")):
            catalogue.ensure_appliance(
                AppliancePayload(name=name, title=name, description=f"{name} appliance", vos=(VO,))
            )
            images = tuple(_file_image(server, name, version, fmt, on) for fmt in ("ova", "qcow2"))
            catalogue.register_version(
                VersionPayload(appliance=name, version=version, notes=f"{name} {version}", images=images)
            )
            catalogue.store_audit(name, version, PASSING_AUDIT)
            catalogue.endorse(name, version, VO)
        catalogue.revoke_cascade("debian-12", N, VO)
    finally:
        catalogue.close()


@pytest.mark.browser
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_version_page_shows_outdated_in_chromium(live_server: LiveServer, browser: Browser) -> None:  # noqa: F811
    _seed_family(live_server)
    page = browser.new_page()
    page.goto(f"{live_server.url}/appliances/science/2026.11.23")
    lineage = page.locator("#lineage")
    expect(lineage.locator(".badge")).to_have_text("outdated")
    expect(lineage).to_contain_text(f"debian-12 {N} is revoked ({VO}): rebuild it on a current base")
    endorsement = page.locator("#endorsements")
    expect(endorsement).to_contain_text("revoked")  # the cascade withdrew science too
    expect(endorsement).to_contain_text("from the command line (invoke endorse)")  # not "by local-admin"
    expect(endorsement).not_to_contain_text("local-admin")
    lineage.get_by_role("link", name=f"debian-12 {N}").click()
    expect(page.locator("h1")).to_contain_text(f"debian-12 {N}")
    expect(page.locator("#lineage")).to_have_count(0)  # the base itself is not layered
    page.close()
