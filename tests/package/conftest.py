"""Fixtures for the package stage: real disks made with qemu-img/qemu-io, packaged for real."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pipeline.appliance import Appliance, find_appliance
from pipeline.package import PackageResult, package_appliance
from pipeline.package.ova import manifest_text
from pipeline.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT.parent / "shared" / "ovf" / "samples"
VERSION = "2026.11.22"
MIB = 1024 * 1024


def sh(*argv: str | os.PathLike[str], cwd: Path | None = None) -> str:
    """Run a real tool for a test; fail with its output if it fails."""
    proc = subprocess.run([os.fspath(a) for a in argv], capture_output=True, text=True, cwd=cwd, check=False)
    assert proc.returncode == 0, f"{argv}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def make_disk(path: Path, size_mib: int = 64, fmt: str = "qcow2") -> Path:
    """A disk with a pattern, a block of incompressible data and holes, like a small real image."""
    raw = path.with_suffix(".src.raw")
    with open(raw, "wb") as f:
        f.truncate(size_mib * MIB)
        f.seek(1 * MIB)
        f.write(b"\x5a" * 3 * MIB)
        f.seek(8 * MIB)
        f.write(os.urandom(2 * MIB))
        f.seek((size_mib - 2) * MIB)
        f.write(b"vmi-pipeline" * 1000)
    if fmt == "raw":
        raw.rename(path)
    else:
        sh("qemu-img", "convert", "-f", "raw", "-O", fmt, raw, path)
        raw.unlink()
    return path


@pytest.fixture(scope="session", autouse=True)
def _private_tmpdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tools that litter TMPDIR (libguestfs, virt-v2v) write into a folder of ours."""
    tmp = tmp_path_factory.mktemp("tooltmp")
    old = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp)
    yield
    if old is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = old


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    if not SAMPLES.is_dir():
        pytest.skip(f"{SAMPLES} is not there (the shared OVF samples live beside the checkout)")
    return SAMPLES


@pytest.fixture(scope="session")
def appliance() -> Appliance:
    return find_appliance(ROOT / "packer_templates", "debian-12")


def settings_for(output_dir: Path) -> Settings:
    config = yaml.safe_load((ROOT / "invoke.yaml").read_text())["vmi"]
    return load_settings({**config, "output_dir": str(output_dir)}, ROOT, environ={})


@pytest.fixture(scope="session")
def source_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64 MiB qcow2 shared by the tests (qemu-img compare checks against it)."""
    return make_disk(tmp_path_factory.mktemp("disk") / "source.qcow2")


@pytest.fixture(scope="session")
def packaged(tmp_path_factory: pytest.TempPathFactory, source_disk: Path) -> PackageResult:
    """The source disk packaged once with ``--disk --out --raw`` (read-only for the tests)."""
    out = tmp_path_factory.mktemp("packaged")
    return package_appliance(
        settings_for(out / "output"), "debian-12", version=VERSION, disk=source_disk, out=out, raw=True
    )


@pytest.fixture(scope="session")
def ova_path(packaged: PackageResult) -> Path:
    return packaged.out_dir / f"debian-12-{VERSION}.ova"


def ova_members(path: Path) -> dict[str, bytes]:
    """Name -> bytes of every member, in archive order (test helper; small OVAs only)."""
    with tarfile.open(path, "r:") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def write_ova(
    path: Path,
    members: list[tuple[str, bytes]],
    fmt: int = tarfile.USTAR_FORMAT,
    special: list[tarfile.TarInfo] | None = None,
) -> Path:
    """A tar with exactly these members in this order (plus ``special`` non-file entries at the end)."""
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
        for info in special or []:
            tar.addfile(info)
    return path


def with_manifest(ovf_name: str, ovf: bytes, files: list[tuple[str, bytes]]) -> bytes:
    """A correct SHA256 manifest for a (possibly tampered) descriptor and its files."""
    import hashlib

    return manifest_text([(n, hashlib.sha256(d).hexdigest()) for n, d in [(ovf_name, ovf), *files]])
