"""The licences dpkg records, read offline from a built disk for the SBOM.

Only ``/usr/share/doc`` is copied out of the root filesystem (e2fsprogs' ``debugfs -c rdump``, userspace
and read-only, as the audit reads disks: ``pipeline.audit.disk``), each file capped; every
``/usr/share/doc/<package>/copyright`` is then read (at most ``MAX_COPYRIGHT_BYTES``) inside that copy,
symlinks resolved as in the guest, and a machine-readable (DEP-5) file gives its ``License:`` fields
(``formats.sbom.debian_licenses``). Free-form copyright files give nothing: no licence is guessed.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from pipeline.audit.disk import TOOL_HINTS, RootFs, find_root_partition, inspect_format
from pipeline.errors import ArtifactError
from pipeline.formats.sbom import debian_licenses
from pipeline.log import log
from pipeline.manifest import InstalledPackage
from pipeline.run import Limits, find_tool, run

MAX_COPYRIGHT_BYTES = 256 * 1024  # the largest copyright file read (a few in Debian exceed 100 KiB)
MAX_DOC_FILE_BYTES = 64 * 1024 * 1024  # each file copied out of /usr/share/doc (sparse files count in full)
COPY_SECONDS = 600.0


def read_licences(
    disk: Path, fmt: str, packages: Iterable[InstalledPackage], scratch: Path
) -> dict[str, tuple[str, ...]]:
    """Package name -> the licences its copyright file declares (packages without a machine-readable
    file are left out). ``scratch`` holds the raw conversion and the copy while this runs."""
    inspect_format(disk, fmt)  # the declared format, never a guess (a backing file could read host files)
    scratch.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="licences-", dir=scratch))
    try:
        raw = disk
        if fmt != "raw":
            raw = work / "disk.raw"
            qemu_img = find_tool("qemu-img")
            run([qemu_img, "convert", "-f", fmt, "-O", "raw", str(disk), str(raw)], timeout=1800)
        part = find_root_partition(raw)
        top = work / "root"
        (top / "usr" / "share").mkdir(parents=True)
        debugfs = find_tool("debugfs", TOOL_HINTS["debugfs"])
        argv = [debugfs, "-c", "-R", f"rdump /usr/share/doc {top / 'usr' / 'share'}", f"{raw}?offset={part.start}"]
        result = run(argv, timeout=COPY_SECONDS, limits=Limits(file_size_bytes=MAX_DOC_FILE_BYTES), check=False)
        if result.returncode != 0:
            raise ArtifactError(f"{disk}: debugfs could not copy /usr/share/doc (exit {result.returncode})")
        if raw != disk:
            raw.unlink()
        return licences_in(RootFs(top, str(disk)), packages)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def licences_in(root: RootFs, packages: Iterable[InstalledPackage]) -> dict[str, tuple[str, ...]]:
    """What each package's ``/usr/share/doc/<name>/copyright`` in ``root`` declares."""
    found: dict[str, tuple[str, ...]] = {}
    free_form = 0
    for p in packages:
        data = root.read_bytes(f"/usr/share/doc/{p.name}/copyright", MAX_COPYRIGHT_BYTES)
        if data is None:
            continue
        licences = debian_licenses(data.decode("utf-8", errors="replace"))
        if licences:
            found[p.name] = licences
        else:
            free_form += 1
    log.info("licences: %d packages declare theirs, %d copyright files are free-form", len(found), free_form)
    return found


def with_licences(
    packages: Iterable[InstalledPackage], licences: Mapping[str, tuple[str, ...]]
) -> tuple[InstalledPackage, ...]:
    """The package list with each package's licences recorded (None where its file declares none)."""
    return tuple(dataclasses.replace(p, licenses=licences.get(p.name)) for p in packages)
