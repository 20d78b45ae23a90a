"""A community appliance layered on the reference build (base kind ``appliance``), scaffolded with
`invoke new-appliance` and built with real Packer + QEMU: its own provisioner ran and the result is
sealed again (checked on the disk itself, mounted read-only)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pipeline.builder import build_appliance
from pipeline.manifest import BuildManifest
from pipeline.rebuild.scaffold import scaffold_appliance
from pipeline.settings import Settings, load_settings

pytestmark = [pytest.mark.slow, pytest.mark.build]


@contextlib.contextmanager
def mounted_root(disk: Path, work: Path) -> Iterator[Path]:
    """The root filesystem of a built qcow2 (one partition at 1 MiB), mounted read-only."""
    raw = work / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(disk), str(raw)], check=True)
    mnt = work / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "ro,loop,offset=1048576", str(raw), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
        raw.unlink()


def test_layered_appliance_builds_on_the_reference(
    reference_build: tuple[Path, BuildManifest], project_root: Path, tmp_path: Path
) -> None:
    base_dir, base_manifest = reference_build
    root = tmp_path / "project"
    shutil.copytree(project_root / "packer_templates" / "debian-12", root / "packer_templates" / "debian-12")
    shutil.copytree(project_root / "packer_templates" / "_shared", root / "packer_templates" / "_shared")
    shutil.copytree(project_root / "provisioners", root / "provisioners")
    config = yaml.safe_load((project_root / "invoke.yaml").read_text())["vmi"]
    settings: Settings = load_settings(config, root, environ={"VMI_CACHE_DIR": str(project_root / ".cache" / "vmi")})
    shutil.copytree(base_dir, settings.output_dir / "debian-12" / base_manifest.version)

    scaffold_appliance(settings, "layer-demo", "debian-12")
    result = build_appliance(settings, "layer-demo")

    m = result.manifest
    assert m.base.kind == "appliance" and m.base.ref == f"debian-12@{base_manifest.version}"
    assert m.base.digest == "sha256:" + base_manifest.artifact("build-disk").sha256
    assert {p.name for p in m.packages} >= {"cloud-init", "openssh-server"}
    with mounted_root(result.disk, tmp_path) as fs:
        assert (fs / "etc/layer-demo/release").read_text().startswith("layer-demo")
        assert "vmi-build" not in (fs / "etc/passwd").read_text()
        assert not list((fs / "etc/ssh").glob("ssh_host_*"))
        assert (fs / "etc/machine-id").read_text() == ""
        assert not any((fs / "var/lib/cloud").iterdir())
