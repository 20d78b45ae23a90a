"""Issue 12 item 5: a version's JSON leads to its images; unknown filters are refused, not ignored."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pipeline.catalogue.contract import VersionPayload
from pipeline.catalogue.http_client import payload_json
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
    assert problem["msg"] == f"unknown query parameter {name!r}: this operation takes {takes}"


def test_declared_parameters_still_work(api: Api) -> None:
    r = api.client.get("/api/v1/appliances?offset=0&limit=1")
    assert r.status_code == 200 and r.json()["limit"] == 1
