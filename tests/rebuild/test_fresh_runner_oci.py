"""A base never built on this runner, published to an OCI registry, is fetched from it (issue 13)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pipeline.builder.published import fetch_published_disk, newest_base_build
from pipeline.publish import publish_version
from tests.publish.oci_registry import Registry
from tests.publish.test_oci import oci_env, project, registry  # noqa: F401 -- fixtures
from tests.publish.test_oci import setup as oci_setup


def test_a_base_published_to_an_oci_registry_is_fetched_too(
    tmp_path: Path,
    registry: Registry,  # noqa: F811
    project: str,  # noqa: F811
    oci_env: None,  # noqa: F811
) -> None:
    """oci:// (Debian's docker-registry on loopback, TLS + auth): the catalogue records the image
    reference; the base is its one layer, read through the registry and checked against the catalogue."""
    settings, packaged = oci_setup(tmp_path / "publisher", registry, project)
    publish_version(settings, "debian-12")
    fresh = dataclasses.replace(settings, output_dir=tmp_path / "fresh" / "output", cache_dir=tmp_path / "fresh" / "c")
    found = newest_base_build(fresh, "debian-12")
    assert found.version_dir is None and found.record is not None
    assert found.record.images[0].uri.startswith(f"oci://{registry.host}/{project}/debian-12:")
    path = fetch_published_disk(fresh, found.record)
    qcow2 = packaged.directory / packaged.manifest.artifact("qcow2").name
    assert path.read_bytes() == qcow2.read_bytes()
    assert path.name == f"sha512-{packaged.manifest.artifact('qcow2').sha512}.qcow2"
