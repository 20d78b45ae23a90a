"""Licences read offline from the reference build's disk (debugfs copy of /usr/share/doc, no boot, no
mount), recorded in the manifest's package list and carried into a schema-valid CycloneDX SBOM."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from pipeline.builder.licences import read_licences, with_licences
from pipeline.formats.sbom import sbom_json
from pipeline.manifest import BuildManifest
from tests.test_sbom import validate


def test_licences_of_the_reference_build(reference_build: tuple[Path, BuildManifest], tmp_path: Path) -> None:
    version_dir, manifest = reference_build
    disk = version_dir / manifest.artifact("build-disk").name
    found = read_licences(disk, "qcow2", manifest.packages, tmp_path)
    # packages whose copyright files are machine-readable in bookworm, and what dpkg records for them
    assert "GPL-3.0-or-later" in found["bash"]
    assert "ISC" in found["sudo"] and "OpenSSH" in found["openssh-server"]
    assert "GPL-3.0-or-later AND ISC" in found["coreutils"]  # an expression whose parts are all known
    # libc6's copyright file is free-form: no licence is guessed for it
    assert "libc6" in {p.name for p in manifest.packages} and "libc6" not in found
    assert len(found) > len(manifest.packages) // 3  # most of Debian is DEP-5 by now
    assert all(0 < len(v) <= 64 and all(len(x) <= 200 for x in v) for v in found.values())
    assert list(tmp_path.iterdir()) == []  # the raw conversion and the copy are gone

    # recorded in the manifest (as the build does), through its JSON form and schema
    with_them = dataclasses.replace(manifest, packages=with_licences(manifest.packages, found))
    recorded = BuildManifest.from_dict(json.loads(with_them.to_json()))
    assert {p.name: p.licenses for p in recorded.packages if p.licenses} == found
    data = sbom_json(recorded)
    validate(data)
    components = {c["name"]: c for c in json.loads(data)["components"]}
    assert {"license": {"id": "GPL-3.0-or-later"}} in components["bash"]["licenses"]
    assert "licenses" not in components["libc6"]
