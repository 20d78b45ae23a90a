"""Issue 12: "docs/adding-an-appliance.md prints a version URL that is a 404". Every catalogue URL the
README and docs/ print (pages, API, image lists, repository files) is requested from a catalogue that
holds what the walkthrough made; each answers 200. Placeholders ({name}, VERSION, ...) are filled in."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from pipeline.catalogue.contract import ImagePayload, VersionPayload
from pipeline.catalogue.http_client import payload_json
from tests.catalogue.conftest import PASSING_AUDIT, Api

ROOT = Path(__file__).resolve().parents[2]
# publish sends the version's SBOM (the README links GET .../sbom)
SBOM = json.dumps({"bomFormat": "CycloneDX", "specVersion": "1.6", "version": 1, "components": []})
APPLIANCE, OLD, NEW, VO = "debian-12-science", "2026.11.21", "2026.11.22", "vo.example.org"
# a path on its own or after a URL's host (not "$VMI_CATALOGUE/..." or "<public>/...": those are examples)
_PATH = re.compile(r"(?:https?://[\w.:-]+|(?<![\w.$>]))(/(?:api/v1|appliances|vos?|repo)/[^\s`)\"'<>,]*)")


def documented_paths() -> dict[str, set[str]]:
    """Path -> the files that print it; prefixes ending in "/" (e.g. "/repo/") are not addresses."""
    found: dict[str, set[str]] = {}
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for raw in _PATH.findall(doc.read_text()):
            path = re.sub(r"\[\?[^\]]*\]$", "", raw).rstrip(":.")
            if not path.endswith("/"):
                found.setdefault(path, set()).add(doc.name)
    return found


def test_every_documented_catalogue_url_answers(signing_api: Api, publish_file: Callable[..., ImagePayload]) -> None:
    api = signing_api
    body = {"title": "Science", "description": "layered on debian-12", "vos": [VO]}
    assert api.client.put(f"/api/v1/appliances/{APPLIANCE}", json=body, headers=api.headers("admin")).status_code == 200
    for version in (OLD, NEW):
        images = tuple(publish_file(APPLIANCE, version, fmt) for fmt in ("ova", "qcow2"))
        payload = payload_json(
            VersionPayload(appliance=APPLIANCE, version=version, notes="walkthrough", images=images, sbom=SBOM)
        )
        path = f"/api/v1/appliances/{APPLIANCE}/versions"
        assert api.client.post(path, json=payload, headers=api.headers("admin")).status_code == 201
        path = f"{path}/{version}"
        assert api.client.put(f"{path}/audit", json=PASSING_AUDIT, headers=api.headers("admin")).status_code == 200
    endorsed = api.client.post(
        f"/api/v1/appliances/{APPLIANCE}/versions/{NEW}/endorsements", json={"vo": VO}, headers=api.headers("admin")
    )
    assert endorsed.status_code == 200, endorsed.text
    image = api.client.get(f"/api/v1/appliances/{APPLIANCE}/versions/{NEW}").json()["images"][0]
    values = {
        "{name}": APPLIANCE, "NAME": APPLIANCE, "{version}": NEW, "VERSION": NEW, "OLD": OLD, "{vo}": VO,
        "{id}": str(image["id"]), "{identifier}": image["identifier"],
    }  # fmt: skip

    paths = documented_paths()
    assert f"/appliances/{APPLIANCE}/{NEW}" in paths  # the walkthrough's version page, as `invoke publish` prints it
    failed = []
    for documented, docs in sorted(paths.items()):
        path = documented
        for placeholder, value in values.items():
            path = path.replace(placeholder, value)
        status = api.client.get(path).status_code
        if status != 200:
            failed.append(f"{', '.join(sorted(docs))}: {documented} -> {path}: HTTP {status}")
    assert failed == []
