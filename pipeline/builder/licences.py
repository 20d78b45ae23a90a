"""The licences dpkg records, read offline from a built disk for the SBOM.

Only ``/usr/share/doc`` is copied out of the root filesystem (e2fsprogs' ``debugfs -c rdump``, userspace
and read-only, as the audit reads disks: ``pipeline.audit.disk``), each file capped; every
``/usr/share/doc/<package>/copyright`` is then read (at most ``MAX_COPYRIGHT_BYTES``) inside that copy,
symlinks resolved as in the guest, and a machine-readable (DEP-5) file gives its ``License:`` fields
(``formats.sbom.debian_licenses``). Free-form copyright files give nothing: no licence is guessed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path

from pipeline.audit.disk import RootFs, folder_copy
from pipeline.formats.sbom import debian_licenses
from pipeline.log import log
from pipeline.manifest import InstalledPackage

MAX_COPYRIGHT_BYTES = 256 * 1024  # the largest copyright file read (a few in Debian exceed 100 KiB)
MAX_DOC_FILE_BYTES = 64 * 1024 * 1024  # each file copied out of /usr/share/doc (sparse files count in full)
COPY_SECONDS = 600.0


def read_licences(
    disk: Path, fmt: str, packages: Iterable[InstalledPackage], scratch: Path
) -> dict[str, tuple[str, ...]]:
    """Package name -> the licences its copyright file declares (packages without a machine-readable
    file are left out). ``scratch`` holds the raw conversion and the copy while this runs."""
    with folder_copy(disk, fmt, scratch, "/usr/share/doc", COPY_SECONDS, MAX_DOC_FILE_BYTES) as top:
        return licences_in(RootFs(top, str(disk)), packages)


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
