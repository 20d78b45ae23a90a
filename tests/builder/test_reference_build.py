"""What the real debian-12 build (session fixture) produced: layout, manifest, SBOM, checksums, log;
and that building again with nothing changed is a no-op."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pipeline.builder import build_appliance
from pipeline.fsutil import hash_file
from pipeline.manifest import BuildManifest
from pipeline.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.build]


def test_layout_and_checksums(reference_build: tuple[Path, BuildManifest]) -> None:
    version_dir, manifest = reference_build
    disk = manifest.artifact("build-disk")
    assert disk.name == f"build/debian-12-{manifest.version}.qcow2"
    digests = hash_file(version_dir / disk.name)
    assert (digests.size, digests.sha256, digests.sha512) == (disk.size, disk.sha256, disk.sha512)
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "-f", "qcow2", "--output=json", str(version_dir / disk.name)],
            capture_output=True, text=True, check=True,
        ).stdout
    )  # fmt: skip
    assert info["virtual-size"] == disk.virtual_size == 3 * 2**30
    assert "backing-filename" not in info
    log = (version_dir / manifest.artifact("log").name).read_text()
    assert "Connected to SSH!" in log and "seal: sealed" in log
    assert not [p for p in version_dir.parent.iterdir() if p.name.startswith(".")]  # no partial folders


def test_manifest_records_provenance_and_sbom(reference_build: tuple[Path, BuildManifest]) -> None:
    _, manifest = reference_build
    names = {p.name: p for p in manifest.packages}
    for required in ("openssh-server", "cloud-init", "linux-image-cloud-amd64", "grub-pc", "sudo"):
        assert required in names, required
    assert names["libc6"].source == "glibc" and names["libc6"].arch == "amd64"
    assert manifest.base.kind == "bootstrap"
    assert any("bookworm-security" in s for s in manifest.base.sources)
    assert manifest.tools["packer"].startswith("Packer v") and "qemu" in manifest.tools
    assert manifest.accel in ("kvm", "tcg")
    assert {"base", "packer", "packer.boot", "packer.provision", "packer.shutdown", "manifest"} <= set(manifest.timings)
    assert {"template", "variables", "base", "provisioner:seal.sh", "tool:packer"} <= set(manifest.inputs)


def test_unchanged_build_is_up_to_date(
    reference_build: tuple[Path, BuildManifest], reference_settings: Settings
) -> None:
    version_dir, manifest = reference_build
    again = build_appliance(reference_settings, "debian-12")
    assert again.up_to_date and again.version == manifest.version and again.version_dir == version_dir
    assert "up to date" in again.summary()
