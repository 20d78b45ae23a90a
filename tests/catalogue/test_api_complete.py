"""Issue 12 item 5: a version's JSON leads to its images; unknown filters are refused, not ignored."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pipeline.catalogue.contract import ImagePayload, PackageInfo, VersionPayload
from pipeline.catalogue.http_client import payload_json
from pipeline.catalogue.settings import CatalogueSettings
from tests.catalogue.conftest import Api

V = "/api/v1/appliances/debian-12/versions"


def test_version_json_has_image_ids_and_links(api: Api, version_payload: Callable[..., VersionPayload]) -> None:
    assert api.client.post(V, json=payload_json(version_payload()), headers=api.headers("alice")).status_code == 201
    version = api.client.get(f"{V}/2026.11.22").json()
    assert version["links"] == {
        "self": f"{V}/2026.11.22",
        "page": "/appliances/debian-12/2026.11.22",
        "appliance": "/api/v1/appliances/debian-12",
        "audit": f"{V}/2026.11.22/audit",
        "versions": V,
        "changes": f"{V}/2026.11.22/changes",
        "sbom": None,  # registered without an SBOM
    }
    assert {i["format"] for i in version["images"]} == {"ova", "qcow2"}
    for image in version["images"]:
        links = image["links"]
        assert links["self"] == f"{V}/2026.11.22/images/{image['id']}"
        assert links["page"] == f"/appliances/debian-12/2026.11.22/images/{image['id']}"
        detail = api.client.get(links["self"]).json()  # an API client reaches packages and manifest
        assert detail["id"] == image["id"] and detail["image"]["sha512"] == image["sha512"]
        assert {p["name"] for p in detail["packages"]} == {"openssh-server", "bash"}
        assert detail["manifest"] == {"appliance": "debian-12", "version": "2026.11.22"}
        assert api.client.get(links["page"]).status_code == 200
        download = api.client.get(links["download"])
        assert download.status_code == 200 and len(download.content) == image["size"]


def test_an_images_glance_properties_come_from_its_manifest(
    api: Api, version_payload: Callable[..., VersionPayload]
) -> None:
    """A UEFI-only build's manifest says ``hw_firmware_type=uefi``: the image's API entry hands it to
    whoever uploads the image to Glance; an image without (BIOS, hybrid) has none."""
    payload = version_payload()
    uefi = {"appliance": "debian-12", "version": "2026.11.22", "image_properties": {"hw_firmware_type": "uefi"}}
    images = [payload.images[0].model_copy(update={"manifest": uefi}), *payload.images[1:]]
    body = payload_json(payload.model_copy(update={"images": images}))
    assert api.client.post(V, json=body, headers=api.headers("alice")).status_code == 201
    found = {}
    for image in api.client.get(f"{V}/2026.11.22").json()["images"]:
        found[image["format"]] = api.client.get(image["links"]["self"]).json()["properties"]
    assert found == {payload.images[0].format: {"hw_firmware_type": "uefi"}, payload.images[1].format: {}}


@pytest.mark.parametrize(
    ("url", "name", "takes"),
    [
        ("/api/v1/images?format=qcow2", "format", "limit, offset"),
        ("/api/v1/appliances?vo=vo.example.org", "vo", "limit, offset"),
        (f"{V}?vo=vo.example.org&offset=0", "vo", "limit, offset"),
        ("/api/v1/appliances/debian-12?format=json", "format", "no query parameters"),
    ],
)
def test_unknown_filters_are_a_422_naming_them(api: Api, url: str, name: str, takes: str) -> None:
    r = api.client.get(url)
    assert r.status_code == 422, r.text
    (problem,) = r.json()["detail"]
    assert problem["loc"] == ["query", name]
    assert problem["msg"] == f"query.{name}: unknown query parameter {name!r}: this operation takes {takes}"


def test_declared_parameters_still_work(api: Api) -> None:
    r = api.client.get("/api/v1/appliances?offset=0&limit=1")
    assert r.status_code == 200 and r.json()["limit"] == 1


def test_changes_since_the_previous_version(
    api: Api, publish_file: Callable[..., ImagePayload], version_payload: Callable[..., VersionPayload]
) -> None:
    from tests.catalogue.conftest import FAILING_AUDIT, PASSING_AUDIT

    first = version_payload("debian-12", "2026.11.22")
    first = first.model_copy(
        update={"images": [i.model_copy(update={"manifest": {"inputs": {"template": "a" * 64}}}) for i in first.images]}
    )
    assert api.client.post(V, json=payload_json(first), headers=api.headers("alice")).status_code == 201
    packages = (
        PackageInfo(name="openssh-server", version="1:9.2p1-2+deb12u5", arch="amd64"),  # upgraded
        PackageInfo(name="curl", version="7.88.1-10+deb12u12", arch="amd64"),  # added; bash removed
    )
    images = tuple(
        publish_file("debian-12", "2026.12.02", fmt, packages=packages, manifest={"inputs": {"template": "b" * 64}})
        for fmt in ("ova", "qcow2")
    )
    second = VersionPayload(appliance="debian-12", version="2026.12.02", notes="security updates", images=images)
    assert api.client.post(V, json=payload_json(second), headers=api.headers("alice")).status_code == 201
    for version, report in (("2026.11.22", FAILING_AUDIT), ("2026.12.02", PASSING_AUDIT)):
        stored = api.client.put(f"{V}/{version}/audit", json=report, headers=api.headers("alice"))
        assert stored.status_code == 200, stored.text

    link = api.client.get(f"{V}/2026.12.02").json()["links"]["changes"]
    changes = api.client.get(link).json()
    assert (changes["old"], changes["new"]) == ("2026.11.22", "2026.12.02")
    assert [(p["name"], p["change"], p["old"], p["new"]) for p in changes["packages"]] == [
        ("bash", "removed", "5.2.15-2", None),
        ("curl", "added", None, "7.88.1-10+deb12u12"),
        ("openssh-server", "upgraded", "1:9.2p1-2+deb12u3", "1:9.2p1-2+deb12u5"),
    ]
    assert changes["audit"] == [{"check": "ssh-host-keys", "old": "fail", "new": "pass"}]
    assert changes["inputs"] == [{"name": "template", "old": "a" * 64, "new": "b" * 64}]
    assert changes["notes"] == [
        "changelog entries are read from the image: `invoke diff --appliance debian-12 2026.11.22 2026.12.02`"
    ]
    first_one = api.client.get(f"{V}/2026.11.22/changes")
    assert first_one.status_code == 404 and "is the first version" in first_one.json()["detail"]
    assert api.client.get(f"{V}/2026.11.22/changes?since=2026.12.02").json()["packages"][0]["change"] == "added"
    page = api.client.get("/appliances/debian-12/2026.12.02").text
    assert "Changes since the previous version" in page and "1:9.2p1-2+deb12u5" in page
    assert "<code>ssh-host-keys</code> fail → pass" in page


def test_a_layered_version_is_outdated_when_its_base_is_revoked(
    signing_api: Api, publish_file: Callable[..., ImagePayload], version_payload: Callable[..., VersionPayload]
) -> None:
    from tests.catalogue.conftest import PASSING_AUDIT

    api = signing_api
    assert api.client.post(V, json=payload_json(version_payload()), headers=api.headers("alice")).status_code == 201
    # the policy audit that gates endorsement is the endorser's (a VO manager's), not the maintainer's own
    assert api.client.put(f"{V}/2026.11.22/audit", json=PASSING_AUDIT, headers=api.headers("mia")).status_code == 200
    endorsed = api.client.post(
        f"{V}/2026.11.22/endorsements", json={"vo": "vo.example.org"}, headers=api.headers("mia")
    )
    assert endorsed.status_code == 200, endorsed.text
    body = {"title": "Science", "description": "layered on debian-12", "vos": []}
    assert api.client.put("/api/v1/appliances/science", json=body, headers=api.headers("alice")).status_code == 200
    base = {"kind": "appliance", "ref": "debian-12@2026.11.22", "digest": "sha256:" + "0" * 64}
    images = tuple(publish_file("science", "2026.11.23", fmt, manifest={"base": base}) for fmt in ("ova", "qcow2"))
    layered = VersionPayload(appliance="science", version="2026.11.23", notes="science on debian-12", images=images)
    science = "/api/v1/appliances/science/versions/2026.11.23"
    registered = api.client.post(
        "/api/v1/appliances/science/versions", json=payload_json(layered), headers=api.headers("alice")
    )
    assert registered.status_code == 201, registered.text
    assert api.client.get(science).json()["lineage"] == {
        "base_appliance": "debian-12", "base_version": "2026.11.22", "outdated": False, "reason": None,
    }  # fmt: skip
    assert api.client.get(f"{V}/2026.11.22").json()["lineage"] is None  # a baseline has no appliance base

    revoked = api.client.delete(f"{V}/2026.11.22/endorsements/vo.example.org", headers=api.headers("mia"))
    assert revoked.status_code == 200, revoked.text
    lineage = api.client.get(science).json()["lineage"]
    assert lineage["outdated"] and lineage["reason"] == "debian-12 2026.11.22 is revoked (vo.example.org)"
    page = api.client.get("/appliances/science/2026.11.23").text
    assert (
        "outdated" in page and "debian-12 2026.11.22 is revoked (vo.example.org): rebuild it on a current base" in page
    )

    assert api.client.post(f"{V}/2026.11.22/archive", headers=api.headers("alice")).status_code == 200
    assert api.client.get(science).json()["lineage"]["reason"] == "debian-12 2026.11.22 is archived"


def test_api_docs_without_the_swagger_bundle_still_list_every_operation(
    cat_settings: CatalogueSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from fastapi.testclient import TestClient

    from pipeline.catalogue.app import create_app
    from pipeline.catalogue.db import migrate

    monkeypatch.setitem(sys.modules, "swagger_ui_bundle", None)  # as on a machine without the wheel
    migrate(cat_settings.database_url)
    with TestClient(create_app(cat_settings, refresh_seconds=None)) as client:
        page = client.get("/api/v1/docs")
        assert page.status_code == 200 and 'id="no-bundle"' in page.text
        assert "pip install swagger-ui-bundle-v2" in page.text and "cdn" not in page.text.lower()
        paths = client.get("/api/v1/openapi.json").json()["paths"]
        for path in paths:
            assert f"<code>{path}</code>" in page.text
        assert client.get("/api/v1/docs/assets/swagger-ui-bundle.js").status_code == 404
