"""`release` on the real reference appliance: build (cached), package, publish to a folder and the
SQLite catalogue — the embedded defaults — ending with the catalogue URL."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pipeline.catalogue.client import open_catalogue
from pipeline.fsutil import hash_file
from pipeline.manifest import BuildManifest
from pipeline.recipe import release_appliance
from pipeline.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.build]


def test_release_ends_in_the_catalogue(
    reference_settings: Settings, reference_build: tuple[Path, BuildManifest], tmp_path: Path
) -> None:
    version_dir, built = reference_build
    settings = dataclasses.replace(
        reference_settings,
        repository=(tmp_path / "repository").as_uri(),
        catalogue=f"sqlite:///{tmp_path / 'catalogue.db'}",
    )
    result = release_appliance(settings, "debian-12")
    version = built.version
    assert result.publish.plan.version_dir == version_dir
    url = f"http://127.0.0.1:8080/appliances/debian-12/{version}"
    assert result.summary().endswith(f"run `invoke serve`, then open {url}")

    manifest = BuildManifest.load(version_dir)  # now with the package artifacts
    roles = ("ova", "qcow2", "sbom", "sha256sums", "sha512sums")
    published = {a.role: a for a in manifest.artifacts if a.role in roles}
    assert len(published) == 5  # the CycloneDX SBOM travels with the images
    stored = tmp_path / "repository" / "debian-12" / version
    assert sorted(p.name for p in stored.iterdir()) == sorted(a.name for a in published.values())
    for artifact in published.values():
        digests = hash_file(stored / artifact.name)
        assert (digests.size, digests.sha256, digests.sha512) == (artifact.size, artifact.sha256, artifact.sha512)

    catalogue = open_catalogue(settings)
    try:
        registered = catalogue.get_version("debian-12", version)
    finally:
        catalogue.close()
    assert registered is not None
    images = {i.format: i for i in registered.images}
    assert sorted(images) == ["ova", "qcow2"]
    for fmt, image in images.items():
        assert image.sha512 == published[fmt].sha512 and image.integrity == "verified"
        assert image.uri == f"http://127.0.0.1:8080/repo/debian-12/{version}/{published[fmt].name}"

    again = release_appliance(settings, "debian-12")  # a rerun: nothing is built, packaged or sent again
    assert f"debian-12 {version} is already packaged" in again.summary()
    assert again.summary().count("already there, verified") == 5
