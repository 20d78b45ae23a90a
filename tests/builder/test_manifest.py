"""The build manifest round-trips through JSON unchanged and is schema-checked on the way in and out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.builder import read_package_list
from pipeline.errors import ArtifactError, BuildError, ConfigError
from pipeline.fsutil import Digests
from pipeline.manifest import Artifact, BaseRef, BuildManifest, InstalledPackage


def sample_manifest(disk_digests: Digests | None = None, inputs_digest: str = "c" * 64) -> BuildManifest:
    d = disk_digests or Digests(123, "1" * 64, "2" * 128)
    return BuildManifest(
        appliance="demo",
        version="2026.11.22",
        created="2026-11-22T01:02:03Z",
        inputs_digest=inputs_digest,
        inputs={"template": "d" * 64, "tool:packer": "e" * 64},
        git_commit="f" * 40 + "-dirty",
        tools={"packer": "Packer v1.6.6"},
        accel="tcg",
        os={"family": "linux", "name": "Debian", "version": "12"},
        arch="x86_64",
        base=BaseRef(
            "bootstrap", "bookworm", "sha256:" + "9" * 64, ("deb http://deb.debian.org/debian bookworm main",)
        ),
        packages=(
            InstalledPackage("bash", "5.2.15-2+b7", "amd64", "bash"),
            InstalledPackage("zlib1g", "1:1.2.13", "amd64"),
        ),
        artifacts=(Artifact.from_digests("build/demo-2026.11.22.qcow2", "build-disk", "qcow2", d, 3 * 2**30),),
        timings={"base": 1.5, "packer": 120.0},
    )


def test_round_trip_through_file(tmp_path: Path) -> None:
    m = sample_manifest()
    m.save(tmp_path)
    again = BuildManifest.load(tmp_path)
    assert again == m
    assert json.loads((tmp_path / "manifest.json").read_text())["format_version"] == 1


def test_loading_a_broken_manifest_names_file_and_field(tmp_path: Path) -> None:
    data = sample_manifest().to_dict()
    data["packages"][0].pop("version")
    data["artifacts"][0]["sha256"] = "xyz"
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError) as err:
        BuildManifest.load(tmp_path)
    text = "\n".join(err.value.problems)
    assert f"{tmp_path / 'manifest.json'}: packages.0.version: is required" in text
    assert "artifacts.0.sha256" in text


def test_invalid_manifest_is_never_written(tmp_path: Path) -> None:
    bad = sample_manifest()
    object.__setattr__(bad, "inputs_digest", "not-a-digest")
    with pytest.raises(ArtifactError):
        bad.save(tmp_path)
    assert not (tmp_path / "manifest.json").exists()


def test_package_list_from_dpkg_query(tmp_path: Path) -> None:
    listing = tmp_path / "packages.tsv"
    listing.write_text(
        "ii \tbash\t5.2.15-2+b7\tamd64\tbash\n"
        "ii \tlibc6\t2.36-9+deb12u9\tamd64\tglibc\n"
        "rc \told-thing\t1.0\tamd64\told-thing\n"  # removed, config files left: not installed
        "ii \tlibgcc-s1\t12.2.0-14\tamd64\tgcc-12 (12.2.0-14)\n"
    )
    packages = read_package_list(listing)
    assert [p.name for p in packages] == ["bash", "libc6", "libgcc-s1"]
    assert packages[1].source == "glibc" and packages[2].source == "gcc-12"


def test_empty_or_missing_package_list_fails_the_build_step(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="manifest"):
        read_package_list(tmp_path / "missing.tsv")
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(BuildError, match="no installed packages"):
        read_package_list(tmp_path / "empty.tsv")
