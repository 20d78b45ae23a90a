"""The qemu-img steps of packaging, and the checksum files published beside the images.

Every qemu-img call names its input format (``-f``, never a probe) and runs under resource limits,
because ``--disk`` accepts images we did not build (security-and-reliability.md §2.1).
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from pipeline.errors import ArtifactError
from pipeline.fsutil import Digests, HashingWriter, atomic_write
from pipeline.package.images import SECTOR, DiskFormat, parse_vmdk_header
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


def convert_to_stream_vmdk(source: Path, fmt: DiskFormat, target: Path, adapter: str) -> None:
    """qemu-img -> streamOptimized VMDK (header v3). ``target`` must already carry the final member
    name: the extent name is written into the VMDK's own descriptor."""
    run(
        [
            qemu_img(), "convert", "-f", fmt.value, "-O", "vmdk",
            "-o", f"subformat=streamOptimized,adapter_type={adapter}",
            source, target,
        ],
        limits=CONVERT_LIMITS,
        timeout=CONVERT_TIMEOUT,
    )  # fmt: skip


_CID = re.compile(rb"\nCID=[0-9a-fA-F]{1,8}\n")


def set_vmdk_cid(path: Path, cid: int) -> None:
    """Replace the random content id qemu-img writes (``%x``, so even its length varies) with ``cid``.

    The embedded descriptor is rewritten inside its reserved, zero-padded sectors; grains are untouched.
    """
    with open(path, "r+b") as f:
        header = parse_vmdk_header(f.read(SECTOR))
        if header is None:
            raise ArtifactError(f"{path}: qemu-img did not write a sparse VMDK header")
        start, length = header.descriptor_offset * SECTOR, header.descriptor_sectors * SECTOR
        f.seek(start)
        region = f.read(length)
        text = region.split(b"\0", 1)[0]
        new, count = _CID.subn(f"\nCID={cid & 0xFFFFFFFF:08x}\n".encode(), text)
        if count != 1 or len(new) >= length:
            raise ArtifactError(f"{path}: no single CID line in the VMDK descriptor")
        f.seek(start)
        f.write(new + b"\0" * (length - len(new)))


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
    """A ``sha256sum``/``sha512sum`` style file (``hex  name``), hashed as it is written."""
    with atomic_write(path) as f:
        os.fchmod(f.fileno(), 0o644)
        writer = HashingWriter(f)
        writer.write("".join(f"{digest}  {name}\n" for name, digest in entries).encode("ascii"))
        return writer.digests()
