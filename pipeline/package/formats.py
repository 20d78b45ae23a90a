"""The disk conversions of packaging (qemu-img, and our own streamOptimized VMDK writer), and the
checksum files published beside the images.

Every qemu-img call names its input format (``-f``, never a probe) and runs under resource limits,
because ``--disk`` accepts images we did not build (security-and-reliability.md §2.1).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from pipeline.errors import ArtifactError
from pipeline.formats.sums import sums_text
from pipeline.formats.vmdk_write import (
    DataExtent,
    StreamVmdk,
    VmdkWriteError,
    check_extents,
    default_deflater,
    grain_runs,
)
from pipeline.formats.vmdk_write import write_stream_vmdk as write_vmdk
from pipeline.fsutil import Digests, HashingWriter, atomic_write
from pipeline.log import log
from pipeline.package.images import DiskFormat
from pipeline.run import Limits, find_tool, run

# qemu-img info on a hostile header must not eat the machine (CVE-2015-5162; Nova's limits).
INFO_LIMITS = Limits(cpu_seconds=30, address_space_bytes=1024**3)
# Conversions read the whole disk: no CPU cap (big disks take minutes), but bounded memory.
CONVERT_LIMITS = Limits(address_space_bytes=4 * 1024**3)
CONVERT_TIMEOUT = 3 * 3600.0


def qemu_img() -> str:
    return find_tool("qemu-img")


def virtual_size(path: Path, fmt: DiskFormat) -> int:
    """The disk's virtual size as qemu-img reads it with the declared format."""
    result = run(
        [qemu_img(), "info", "-f", fmt.value, "--output=json", path],
        limits=INFO_LIMITS,
        timeout=60,
        hint=f"is {path} really a {fmt.value} image?",
    )
    try:
        return int(json.loads(result.stdout)["virtual-size"])
    except (ValueError, KeyError, TypeError) as e:
        raise ArtifactError(f"{path}: qemu-img info gave no virtual-size: {result.stdout[:200]!r}") from e


MAP_WINDOW = 1024**3  # virtual bytes per `qemu-img map` call: its output stays a few MiB at most
MAX_EXTENTS = 1 << 20  # separate data extents a disk may have (a thoroughly fragmented 64 GiB qcow2)


def data_extents(path: Path, fmt: DiskFormat, capacity: int) -> list[DataExtent] | None:
    """Where the guest data lies in the file (``qemu-img map``), adjacent pieces merged; holes and
    zero clusters are left out. None when some data is not stored as is (compressed qcow2 clusters):
    then only a raw view of the disk can be read directly.

    The map is taken one window of the disk at a time, so that no single output grows without bound.
    """
    extents: list[DataExtent] = []
    for window in range(0, capacity, MAP_WINDOW):
        result = run(
            [qemu_img(), "map", "-f", fmt.value, "--output=json", f"--start-offset={window}",
             f"--max-length={min(MAP_WINDOW, capacity - window)}", path],
            limits=INFO_LIMITS,
            timeout=120,
            hint=f"is {path} really a {fmt.value} image?",
        )  # fmt: skip
        try:
            entries = json.loads(result.stdout)
            for entry in entries:
                if not entry["data"]:
                    continue
                if "offset" not in entry:
                    return None
                _add_extent(extents, DataExtent(int(entry["start"]), int(entry["length"]), int(entry["offset"])))
        except (ValueError, TypeError, KeyError) as e:
            raise ArtifactError(f"{path}: qemu-img map printed no extent list: {result.stdout[:200]!r}") from e
        if len(extents) > MAX_EXTENTS:
            raise ArtifactError(f"{path}: more than {MAX_EXTENTS:,} separate data extents (too fragmented)")
    try:
        check_extents(extents, capacity, path.stat().st_size)
    except VmdkWriteError as e:
        raise ArtifactError(f"{path}: qemu-img map: {e}") from e
    return extents


def _add_extent(extents: list[DataExtent], extent: DataExtent) -> None:
    last = extents[-1] if extents else None
    if last and last.start + last.length == extent.start and last.offset + last.length == extent.offset:
        extents[-1] = DataExtent(last.start, last.length + extent.length, last.offset)
    else:
        extents.append(extent)


def write_stream_vmdk(source: Path, fmt: DiskFormat, target: Path, disk: StreamVmdk, scratch: Path) -> str:
    """Write ``source`` as a streamOptimized VMDK at ``target``; return its sha256 (hashed as written).

    The source is read once, only where it holds data (the ``qemu-img map``), straight from its
    file; a source with compressed clusters is first converted to a sparse raw view in ``scratch``.
    """
    view, view_fmt = source, fmt
    extents = data_extents(source, fmt, disk.capacity)
    if extents is None:
        view, view_fmt = scratch / "raw-view.raw", DiskFormat.RAW
        convert_raw(source, fmt, view)
        extents = data_extents(view, view_fmt, disk.capacity)
        if extents is None:
            raise ArtifactError(f"{view}: qemu-img map found no offsets in a raw file")
    deflater = default_deflater()
    log.info("deflating %s of data with %s", f"{sum(e.length for e in extents):,} bytes", deflater.name)
    fd = os.open(view, os.O_RDONLY)
    try:
        with open(target, "wb") as f:
            out = _Sha256Writer(f)
            write_vmdk(out, disk, grain_runs(fd, extents), deflater)
    except VmdkWriteError as e:
        raise ArtifactError(f"{source}: cannot write {target.name}: {e}") from e
    except OSError as e:
        raise ArtifactError(f"{source}: cannot read the disk: {e.strerror}") from e
    finally:
        os.close(fd)
    return out.hexdigest()


class _Sha256Writer:
    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self._sha256.update(data)
        return self._raw.write(data)

    def hexdigest(self) -> str:
        return self._sha256.hexdigest()


@functools.cache
def zstd_supported() -> bool:
    """Whether this qemu-img can write zstd-compressed qcow2 clusters (QEMU >= 5.1 built with zstd)."""
    result = run([qemu_img(), "create", "-f", "qcow2", "-o", "help"], check=False)
    return "compression_type" in result.stdout


def convert_compressed_qcow2(source: Path, fmt: DiskFormat, target: Path) -> str:
    """Compressed qcow2 (zstd clusters where supported, else zlib); returns the compression used."""
    compression = "zstd" if zstd_supported() else "zlib"
    options = ["-o", "compression_type=zstd"] if compression == "zstd" else []
    run(
        [qemu_img(), "convert", "-c", "-f", fmt.value, "-O", "qcow2", *options, source, target],
        limits=CONVERT_LIMITS,
        timeout=CONVERT_TIMEOUT,
    )
    return compression


def convert_raw(source: Path, fmt: DiskFormat, target: Path) -> None:
    """A raw image (sparse on disk), for sites that import raw."""
    run(
        [qemu_img(), "convert", "-f", fmt.value, "-O", "raw", source, target],
        limits=CONVERT_LIMITS,
        timeout=CONVERT_TIMEOUT,
    )


def write_sums(path: Path, entries: Sequence[tuple[str, str]]) -> Digests:
    """A ``sha256sum``/``sha512sum`` style file (``formats.sums``), written atomically, hashed as written."""
    with atomic_write(path) as f:
        os.fchmod(f.fileno(), 0o644)
        writer = HashingWriter(f)
        writer.write(sums_text(entries))
        return writer.digests()
