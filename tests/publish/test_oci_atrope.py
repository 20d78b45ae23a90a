"""What EGI's atrope 2.1.0 (EGI-Federation/atrope ``atrope/image_list/harbor.py`` + ``atrope/image.py``)
needs from the registry API, done here the way it does it, with plain requests and basic auth:

- the tag it syncs: first tag matching ``tag_pattern`` ``^[^-]*$`` (re.match) -> only the rolling tag;
- GET /v2/<name>/manifests/<tag> (oras-py's Accept list); annotations = ``layers[0].annotations``;
  without ``eu.egi.cloud.tag`` the image is ignored; "we are assuming here a single layer";
- oras pull writes every layer to a file named by ``org.opencontainers.image.title``; atrope takes the
  largest file and checks sha256(file) == ``layers[0].digest``; disk_format/container_format from
  ``org.openstack.glance.*`` (defaults raw/bare), arch/os from the glance annotations.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from pipeline.publish import publish_version

from .conftest import MiB, make_packaged_version, make_settings
from .oci_registry import PASSWORD, USER, Registry, start_registry

ORAS_ACCEPT = (
    "application/vnd.oci.image.manifest.v1+json,application/vnd.oci.image.index.v1+json,"
    "application/vnd.docker.distribution.manifest.v2+json,application/vnd.docker.distribution.manifest.list.v2+json"
)
TAG_PATTERN = re.compile("^[^-]*$")  # fedcloud-catchall-operations image_sync.py


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from start_registry(tmp_path_factory.mktemp("registry-atrope"))


def test_atrope_finds_pulls_and_verifies_the_image(
    tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = f"egi{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("VMI_OCI_USERNAME", USER)
    monkeypatch.setenv("VMI_OCI_PASSWORD", PASSWORD)
    monkeypatch.setenv("VMI_OCI_CA", str(registry.ca))
    settings = make_settings(tmp_path, f"oci://{registry.host}/{project}")
    packaged = make_packaged_version(settings.output_dir, qcow2_size=5 * MiB + 7)
    publish_version(settings, "debian-12")

    session = requests.Session()
    session.auth = (USER, PASSWORD)
    session.verify = str(registry.ca)
    session.trust_env = False
    base = f"https://{registry.host}/v2/{project}/debian-12"
    tags = session.get(f"{base}/tags/list", timeout=30).json()["tags"]
    synced = [t for t in tags if TAG_PATTERN.match(t)]
    assert synced == ["12"]  # not the long tag, not the OVA's tags, not the referrers fallback tags
    assert {"12-2026.11.22", "12-ova", "12-2026.11.22-ova"} <= set(tags)  # the OVA is there, not synced

    reply = session.get(f"{base}/manifests/12", headers={"Accept": ORAS_ACCEPT}, timeout=30)
    assert reply.status_code == 200
    manifest = reply.json()
    assert len(manifest["layers"]) == 1
    annotations = dict(manifest["layers"][0]["annotations"])
    assert annotations["eu.egi.cloud.tag"] == "2026.11.22"
    assert annotations.get("org.openstack.glance.disk_format", "raw") == "qcow2"
    assert annotations.get("org.openstack.glance.container_format", "bare") == "bare"
    assert (annotations["org.openstack.glance.architecture"], annotations["org.openstack.glance.os_distro"]) == (
        "x86_64",
        "debian",
    )
    assert annotations["org.openstack.glance.os_version"] == "12"

    outdir = tmp_path / "pulled"
    outdir.mkdir()
    for layer in manifest["layers"]:  # oras pull: every layer, named by its title
        name = layer.get("annotations", {}).get("org.opencontainers.image.title", layer["digest"])
        with session.get(f"{base}/blobs/{layer['digest']}", stream=True, timeout=60) as blob:
            blob.raise_for_status()
            with open(outdir / name, "wb") as f:
                for chunk in blob.iter_content(MiB):
                    f.write(chunk)
    largest = max(outdir.iterdir(), key=lambda p: p.stat().st_size)
    assert largest.name == packaged.manifest.artifact("qcow2").name
    assert "sha256:" + hashlib.sha256(largest.read_bytes()).hexdigest() == manifest["layers"][0]["digest"]
