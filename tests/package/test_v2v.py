"""An independent importer accepts our OVAs: Debian's virt-v2v (`-i ova`), under TCG.

`--print-source` (about a second) checks the tar layout, the SHA256 manifest and parses the OVF;
the slow test converts the real debian-12 build end to end (guest inspection included).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.formats.ovf import HardwareProfile
from pipeline.manifest import BuildManifest
from pipeline.package import package_appliance

from .helpers import settings_for


@pytest.fixture(scope="session")
def v2v_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    if shutil.which("virt-v2v") is None:
        pytest.fail("virt-v2v is not installed: run ./scripts/setup (apt-get install virt-v2v nbdkit libnbd-bin)")
    base = tmp_path_factory.mktemp("libguestfs")
    (base / "cache").mkdir()
    (base / "tmp").mkdir()
    return {
        **os.environ,
        "LIBGUESTFS_BACKEND": "direct",
        "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg",
        "LIBGUESTFS_CACHEDIR": str(base / "cache"),
        "TMPDIR": str(base / "tmp"),
        "LANG": "C",
    }


def v2v(env: dict[str, str], *args: str | os.PathLike[str], timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["virt-v2v", *map(os.fspath, args)], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


EXPECTED_BUS = {HardwareProfile.PORTABLE: "sata", HardwareProfile.VMWARE: "scsi", HardwareProfile.VIRTUALBOX: "sata"}


@pytest.mark.parametrize("profile", list(HardwareProfile))
def test_virt_v2v_reads_our_ova(
    v2v_env: dict[str, str], source_disk: Path, tmp_path: Path, profile: HardwareProfile
) -> None:
    package_appliance(
        settings_for(tmp_path / "o"), "debian-12", version="1", disk=source_disk, out=tmp_path, profile=profile
    )
    proc = v2v(v2v_env, "-i", "ova", tmp_path / "debian-12-1.ova", "--print-source")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "source name: debian-12" in out
    assert "memory: 2147483648 (bytes)" in out  # 2048 MiB recommended RAM
    assert "nr vCPUs: 2" in out
    assert f"0 [{EXPECTED_BUS[profile]}]" in out
    assert 'Bridge "VM Network"' in out
    assert "could not parse" not in proc.stderr


def test_virt_v2v_checks_our_manifest(v2v_env: dict[str, str], source_disk: Path, tmp_path: Path) -> None:
    package_appliance(settings_for(tmp_path / "o"), "debian-12", version="1", disk=source_disk, out=tmp_path)
    ova = tmp_path / "debian-12-1.ova"
    data = bytearray(ova.read_bytes())
    data[-20000] ^= 0x01  # a byte of the disk member
    ova.write_bytes(bytes(data))
    proc = v2v(v2v_env, "-i", "ova", ova, "--print-source")
    assert proc.returncode != 0
    assert "does not match manifest" in proc.stderr


@pytest.mark.slow
@pytest.mark.build
def test_virt_v2v_converts_the_real_debian_12_ova(
    reference_build: tuple[Path, BuildManifest], v2v_env: dict[str, str], tmp_path: Path
) -> None:
    version_dir, manifest = reference_build
    disk = version_dir / manifest.artifact("build-disk").name
    out = tmp_path / "package"
    result = package_appliance(settings_for(tmp_path / "o"), "debian-12", version=manifest.version, disk=disk, out=out)
    ova = out / f"debian-12-{manifest.version}.ova"
    assert ova.name in result.summary()
    converted = tmp_path / "converted"
    converted.mkdir()
    proc = v2v(
        v2v_env, "-i", "ova", ova, "-o", "local", "-os", converted, "-of", "qcow2", timeout=3600
    )  # ~4 min on a quiet machine; 30+ under heavy shared load
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    disks = sorted(converted.glob("*-sda"))
    assert disks, list(converted.iterdir())
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "-f", "qcow2", "--output=json", disks[0]], capture_output=True, text=True, check=True
        ).stdout
    )
    source = json.loads(
        subprocess.run(
            ["qemu-img", "info", "-f", "qcow2", "--output=json", disk], capture_output=True, text=True, check=True
        ).stdout
    )
    assert info["virtual-size"] == source["virtual-size"]
    assert (converted / "debian-12.xml").is_file()
    # the guest was inspected and converted (virt-v2v names it by its version here: "Converting 12.x to run on KVM")
    assert re.search(r"Converting \S.* to run on KVM", proc.stdout), proc.stdout[-2000:]
