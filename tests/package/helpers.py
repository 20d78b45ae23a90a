"""Helpers for the package tests: real disks made with qemu-img, hand-built (hostile) OVAs."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import yaml

from pipeline.formats.ova import manifest_text
from pipeline.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = Path(__file__).resolve().parent / "data" / "ovf-samples"  # other tools' OVFs, origins in its README
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
    path.parent.mkdir(parents=True, exist_ok=True)
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


def settings_for(output_dir: Path) -> Settings:
    config = yaml.safe_load((ROOT / "invoke.yaml").read_text())["vmi"]
    return load_settings({**config, "output_dir": str(output_dir)}, ROOT, environ={})


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
            if fmt == tarfile.PAX_FORMAT:
                info.pax_headers = {"comment": "written by a PAX-default tool"}
            tar.addfile(info, io.BytesIO(data))
        for info in special or []:
            tar.addfile(info)
    return path


def with_manifest(ovf_name: str, ovf: bytes, files: list[tuple[str, bytes]]) -> bytes:
    """A correct SHA256 manifest for a (possibly tampered) descriptor and its files."""
    import hashlib

    return manifest_text([(n, hashlib.sha256(d).hexdigest()) for n, d in [(ovf_name, ovf), *files]])
