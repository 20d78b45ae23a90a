"""The CycloneDX SBOM: schema-valid (the library's own strict CycloneDX 1.6 JSON schema), one purl per
installed package, the image files with their digests as the top component, the same bytes every time."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from hypothesis import given
from hypothesis import strategies as st

from pipeline.formats.sbom import MEDIA_TYPE, debian_licenses, sbom_json, spdx_from_debian
from pipeline.manifest import BuildManifest, InstalledPackage
from pipeline.package import write_sbom
from tests.fuzzing import bounded
from tests.publish.conftest import make_packaged_version

PACKAGES = (
    InstalledPackage("bash", "5.2.15-2+b7", "amd64", "bash"),
    InstalledPackage("libc6", "2.36-9+deb12u9", "amd64", "glibc"),
    InstalledPackage("tzdata", "2024a-0+deb12u1", "all", "tzdata"),
    InstalledPackage("libgcc-s1", "1:12.2.0-14", "amd64", "gcc-12"),
)


def validate(data: bytes) -> None:
    errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(data.decode(), all_errors=True)
    assert errors is None, [str(e) for e in errors]


@pytest.fixture
def manifest(tmp_path: Path) -> BuildManifest:
    return dataclasses.replace(make_packaged_version(tmp_path).manifest, packages=PACKAGES, git_commit="ab" * 20)


def test_sbom_is_valid_cyclonedx_with_every_package(manifest: BuildManifest) -> None:
    data = sbom_json(manifest, {"bash": ["GPL-3.0-or-later"], "tzdata": ["public-domain"]})
    validate(data)
    doc = json.loads(data)
    assert doc["bomFormat"] == "CycloneDX" and doc["specVersion"] == "1.6"
    by_name = {c["name"]: c for c in doc["components"]}
    assert sorted(by_name) == ["bash", "libc6", "libgcc-s1", "tzdata"]
    assert by_name["bash"]["purl"] == "pkg:deb/debian/bash@5.2.15-2%2Bb7?arch=amd64&distro=debian-12"
    assert by_name["tzdata"]["purl"] == "pkg:deb/debian/tzdata@2024a-0%2Bdeb12u1?arch=all&distro=debian-12"
    assert by_name["libgcc-s1"]["purl"] == "pkg:deb/debian/libgcc-s1@1:12.2.0-14?arch=amd64&distro=debian-12"
    assert by_name["libgcc-s1"]["version"] == "1:12.2.0-14"
    assert by_name["libc6"]["properties"] == [{"name": "vmi-pipeline:deb:source", "value": "glibc"}]
    assert by_name["bash"]["licenses"] == [{"license": {"id": "GPL-3.0-or-later"}}]
    assert by_name["tzdata"]["licenses"] == [{"license": {"name": "public-domain"}}]
    assert "licenses" not in by_name["libc6"]  # unknown is left out, never guessed


def test_top_component_is_the_image_with_its_digests(manifest: BuildManifest) -> None:
    doc = json.loads(sbom_json(manifest))
    top = doc["metadata"]["component"]
    qcow2 = manifest.artifact("qcow2")
    ova = manifest.artifact("ova")
    assert (top["name"], top["version"], top["type"]) == ("debian-12", "2026.11.22", "operating-system")
    assert top["hashes"] == [{"alg": "SHA-256", "content": qcow2.sha256}, {"alg": "SHA-512", "content": qcow2.sha512}]
    files = {c["name"]: c["hashes"][0]["content"] for c in top["components"]}
    assert files == {qcow2.name: qcow2.sha256, ova.name: ova.sha256}
    assert doc["metadata"]["timestamp"] == "2026-11-22T01:02:03+00:00"
    top_deps = next(d for d in doc["dependencies"] if d["ref"] == top["bom-ref"])
    assert len(top_deps["dependsOn"]) == len(PACKAGES)
    assert {"name": "vmi-pipeline:git-commit", "value": "ab" * 20} in top["properties"]


def test_same_manifest_same_bytes_and_other_version_other_serial(manifest: BuildManifest, tmp_path: Path) -> None:
    first = sbom_json(manifest)
    assert sbom_json(manifest) == first
    other = json.loads(sbom_json(dataclasses.replace(manifest, version="2026.11.23")))
    assert other["serialNumber"] != json.loads(first)["serialNumber"]
    path = write_sbom(manifest, tmp_path)
    assert path.name == "debian-12-2026.11.22.cdx.json"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(first).hexdigest()
    assert MEDIA_TYPE == "application/vnd.cyclonedx+json"


def test_a_broken_sbom_fails_the_schema_check(manifest: BuildManifest) -> None:
    """The validator used above is able to fail (a check that cannot fail proves nothing)."""
    doc = json.loads(sbom_json(manifest))
    doc["components"][0]["type"] = "vm-image"
    with pytest.raises(AssertionError):
        validate(json.dumps(doc).encode())


@pytest.mark.build
def test_sbom_of_the_reference_build(reference_build: tuple[Path, BuildManifest]) -> None:
    _, manifest = reference_build
    data = sbom_json(manifest)
    validate(data)
    doc = json.loads(data)
    assert len(doc["components"]) == len(manifest.packages) > 100
    assert all(c["purl"].startswith("pkg:deb/debian/") and "distro=debian-12" in c["purl"] for c in doc["components"])


def test_a_packaged_sbom_is_published_with_the_images(tmp_path: Path) -> None:
    from pipeline.publish import publish_version
    from tests.publish.conftest import make_settings

    settings = make_settings(tmp_path, (tmp_path / "repository").as_uri())
    packaged = make_packaged_version(settings.output_dir)
    written = write_sbom(packaged.manifest, packaged.directory)  # what packaging does next to the images
    result = publish_version(settings, "debian-12")
    stored = tmp_path / "repository" / "debian-12" / "2026.11.22" / written.name
    assert stored.read_bytes() == written.read_bytes()
    assert f"debian-12/2026.11.22/{written.name}: uploaded, verified" in result.summary()
    validate(stored.read_bytes())


DEP5 = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: example

Files: *
Copyright: 2020 Someone
License: GPL-2+
 This program is free software...

Files: lib/*
License: Expat

Files: extra/*
License: GPL-1+ or Artistic

Files: odd/*
License: LGPL-2.1+ or Artistic, and BSD-3-clause

Files: pd/*
License: public-domain
"""


def test_licences_from_a_machine_readable_copyright_file() -> None:
    assert debian_licenses(DEP5) == (
        "GPL-1.0-or-later OR Artistic-1.0",
        "GPL-2.0-or-later",
        "LGPL-2.1+ or Artistic, and BSD-3-clause",
        "MIT",
        "public-domain",
    )
    assert debian_licenses("This is the Debian prepackaged version of bash.\nCopyright (C) ...\n") == ()
    assert spdx_from_debian("LGPL-3") == "LGPL-3.0-only" and spdx_from_debian("GPLv3+") == "GPL-3.0-or-later"
    assert spdx_from_debian("BSD-4-clause-UC") is None


def test_licences_found_in_copyright_files_are_schema_valid_in_the_sbom(manifest: BuildManifest) -> None:
    data = sbom_json(manifest, {"bash": debian_licenses(DEP5)})
    validate(data)
    bash = next(c for c in json.loads(data)["components"] if c["name"] == "bash")
    assert {"license": {"name": "GPL-1.0-or-later OR Artistic-1.0"}} in bash["licenses"]  # no mixing allowed
    assert {"license": {"name": "public-domain"}} in bash["licenses"]
    assert {"license": {"id": "GPL-2.0-or-later"}} in bash["licenses"]
    alone = sbom_json(manifest, {"bash": ["GPL-1.0-or-later OR Artistic-1.0"]})
    validate(alone)
    bash = next(c for c in json.loads(alone)["components"] if c["name"] == "bash")
    assert bash["licenses"] == [{"expression": "GPL-1.0-or-later OR Artistic-1.0"}]


@given(st.text(max_size=3000))
def test_any_copyright_text_gives_a_bounded_answer(text: str) -> None:
    with bounded(seconds=2, memory_bytes=16 * 2**20):
        found = debian_licenses("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n" + text)
    assert len(found) <= 64 and all(0 < len(x) <= 200 for x in found)


@given(st.lists(st.text(min_size=1, max_size=40), max_size=4))
def test_any_licence_strings_give_a_schema_valid_sbom(values: list[str]) -> None:
    manifest = BuildManifest.from_dict(json.loads(FIXTURE_MANIFEST))
    with bounded(seconds=5, memory_bytes=64 * 2**20):
        data = sbom_json(manifest, {"bash": values})
    validate(data)


FIXTURE_MANIFEST = json.dumps(
    {
        "format_version": 1,
        "appliance": "debian-12",
        "version": "2026.11.22",
        "created": "2026-11-22T01:02:03Z",
        "inputs_digest": "a" * 64,
        "inputs": {},
        "git_commit": None,
        "tools": {},
        "accel": "tcg",
        "os": {"family": "linux", "name": "Debian", "version": "12"},
        "arch": "x86_64",
        "base": {"kind": "bootstrap", "ref": "bookworm", "digest": "c" * 64},
        "packages": [{"name": "bash", "version": "5.2.15-2+b7", "arch": "amd64", "source": "bash"}],
        "artifacts": [],
        "timings": {},
    }
)
