"""Disk image headers, read in Python before qemu-img ever sees a file.

qemu-img trusts what a header says: a backing file, an external data file or a flat extent can
make it open host files (CVE-2015-5163, CVE-2024-32498, CVE-2022-47951), and probing lets a raw
image pose as qcow2 (CVE-2010-3851). So we read the header ourselves, require exactly the declared
format, and refuse every feature that points outside the image (shape of oslo.utils'
``format_inspector``; security-and-reliability.md §2.1).
"""

from __future__ import annotations

import enum
import re
import struct
from dataclasses import dataclass, field
from typing import Protocol

HEAD_BYTES = 64 * 1024  # covers every magic we look for, and qcow2 header extensions in the first cluster
SECTOR = 512
VMDK_DESCRIPTOR_MAX = 1024 * 1024 - 1  # oslo.utils' bound: a real embedded descriptor is < 1 KiB

QCOW2_MAGIC = b"QFI\xfb"
VMDK_MAGIC = b"KDMV"
_QCOW2_EXT_DATA_FILE = 0x44415441
_QCOW2_EXT_BACKING_FORMAT = 0xE2792ACA
_QCOW2_INCOMPAT_KNOWN = 0b11011  # dirty, corrupt, (bit 2 = external data file: refused), compression type, extended L2
_QCOW2_INCOMPAT_DATA_FILE = 1 << 2
_VMDK_FLAG_COMPRESSED = 1 << 16
_VMDK_FLAG_MARKERS = 1 << 17
_VMDK_GD_AT_END = 0xFFFFFFFFFFFFFFFF


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class DiskFormat(enum.StrEnum):
    QCOW2 = "qcow2"
    RAW = "raw"
    VMDK = "vmdk"


# Magic numbers of formats we never accept, so a "raw" disk cannot smuggle one in (polyglots).
_FOREIGN_MAGIC: list[tuple[str, int, bytes]] = [
    ("qcow2", 0, QCOW2_MAGIC),
    ("vmdk (sparse)", 0, VMDK_MAGIC),
    ("vmdk (descriptor)", 0, b"# Disk DescriptorFile"),
    ("vhd", 0, b"conectix"),
    ("vhdx", 0, b"vhdxfile"),
    ("qed", 0, b"QED\x00"),
    ("luks", 0, b"LUKS\xba\xbe"),
    ("vdi", 0x40, struct.pack("<I", 0xBEDA107F)),
    ("iso9660", 0x8001, b"CD001"),
]


@dataclass(frozen=True)
class DiskInspection:
    """What the header says, and every reason not to hand the image to qemu-img."""

    format: DiskFormat
    virtual_size: int | None
    subformat: str = ""
    version: int = 0
    problems: tuple[str, ...] = field(default=())

    @property
    def safe(self) -> bool:
        return not self.problems


def detected_formats(head: bytes) -> list[str]:
    """Names of every known format whose magic appears at its offset in ``head``."""
    found = [name for name, offset, magic in _FOREIGN_MAGIC if head[offset : offset + len(magic)] == magic]
    return found


def inspect_disk(stream: Readable, declared: DiskFormat, size: int) -> DiskInspection:
    """Inspect the image that starts at the stream's current position (``size`` bytes long).

    Reads at most the first 64 KiB plus an embedded VMDK descriptor; never the data.
    """
    head = _read_upto(stream, HEAD_BYTES)
    if declared is DiskFormat.QCOW2:
        return _inspect_qcow2(head)
    if declared is DiskFormat.VMDK:
        return _inspect_vmdk(head, stream, size)
    found = detected_formats(head)
    problems = [f"declared raw but carries a {name} header (format confusion)" for name in found]
    if size % SECTOR:
        problems.append(f"raw image size {size} is not a multiple of {SECTOR} bytes")
    return DiskInspection(DiskFormat.RAW, size, problems=tuple(problems))


def _read_upto(stream: Readable, n: int) -> bytes:
    chunks, left = [], n
    while left > 0:
        chunk = stream.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _inspect_qcow2(head: bytes) -> DiskInspection:
    if len(head) < 72 or head[:4] != QCOW2_MAGIC:
        found = ", ".join(detected_formats(head)) or "no known"
        return DiskInspection(DiskFormat.QCOW2, None, problems=(f"declared qcow2 but has {found} header",))
    version, backing_offset, backing_size, cluster_bits, virtual_size, crypt = struct.unpack_from(">IQIIQI", head, 4)
    problems: list[str] = []
    if version not in (2, 3):
        problems.append(f"qcow2 version {version} is not supported (only 2 and 3)")
    if not 9 <= cluster_bits <= 21:
        problems.append(f"qcow2 cluster_bits {cluster_bits} is outside 9..21")
    if backing_offset or backing_size:
        problems.append("qcow2 has a backing file (it could read host files: CVE-2015-5163)")
    if crypt:
        problems.append(f"qcow2 is encrypted (method {crypt})")
    header_length = 72
    if version == 3 and len(head) >= 104:
        incompatible = struct.unpack_from(">Q", head, 72)[0]
        header_length = struct.unpack_from(">I", head, 100)[0]
        if incompatible & _QCOW2_INCOMPAT_DATA_FILE:
            problems.append("qcow2 uses an external data file (CVE-2024-32498)")
        unknown = incompatible & ~(_QCOW2_INCOMPAT_KNOWN | _QCOW2_INCOMPAT_DATA_FILE)
        if unknown:
            problems.append(f"qcow2 has unknown incompatible feature bits {unknown:#x}")
    problems.extend(_qcow2_extension_problems(head, header_length))
    return DiskInspection(DiskFormat.QCOW2, virtual_size, "", version, tuple(problems))


def _qcow2_extension_problems(head: bytes, offset: int) -> list[str]:
    problems: list[str] = []
    for _ in range(64):  # a real image has a handful; a loop without end is an attack
        if offset + 8 > len(head):
            return problems
        ext_type, ext_len = struct.unpack_from(">II", head, offset)
        if ext_type == 0:
            return problems
        if ext_type == _QCOW2_EXT_DATA_FILE:
            problems.append("qcow2 names an external data file (CVE-2024-32498)")
        elif ext_type == _QCOW2_EXT_BACKING_FORMAT:
            problems.append("qcow2 names a backing file format")
        offset += 8 + (ext_len + 7) // 8 * 8
    problems.append("qcow2 has too many header extensions")
    return problems


# Lines allowed in an embedded VMDK descriptor (oslo.utils' whitelist idea): anything else is refused.
_VMDK_LINE = re.compile(
    r'^(#.*|\s*|version=\d+|CID=[0-9a-fA-F]{1,8}|parentCID=ffffffff|encoding="[A-Za-z0-9-]+"|'
    r'createType="[A-Za-z]+"|ddb\.[A-Za-z0-9.]+ = "[^"\n]*")$'
)
_VMDK_EXTENT = re.compile(r'^(RW|RDONLY|NOACCESS) (\d+) ([A-Z]+)(?: "([^"]*)")?(?: \d+)?$')


@dataclass(frozen=True)
class VmdkHeader:
    version: int
    flags: int
    capacity_sectors: int
    grain_sectors: int
    descriptor_offset: int
    descriptor_sectors: int
    gd_offset: int
    compress_algorithm: int


def parse_vmdk_header(head: bytes) -> VmdkHeader | None:
    """The fields of a hosted sparse extent header (VMware's ``SparseExtentHeader``), or None."""
    if len(head) < SECTOR or head[:4] != VMDK_MAGIC:
        return None
    version, flags, capacity, grain, desc_off, desc_size = struct.unpack_from("<IIQQQQ", head, 4)
    gd_offset = struct.unpack_from("<Q", head, 56)[0]
    compress = struct.unpack_from("<H", head, 77)[0]
    return VmdkHeader(version, flags, capacity, grain, desc_off, desc_size, gd_offset, compress)


def _inspect_vmdk(head: bytes, stream: Readable, size: int) -> DiskInspection:
    header = parse_vmdk_header(head)
    if header is None:
        found = ", ".join(detected_formats(head)) or "no known"
        return DiskInspection(DiskFormat.VMDK, None, problems=(f"declared vmdk but has {found} sparse header",))
    problems: list[str] = []
    if header.version not in (1, 2, 3):
        problems.append(f"vmdk sparse header version {header.version} is not supported")
    if header.grain_sectors == 0 or header.grain_sectors & (header.grain_sectors - 1):
        problems.append(f"vmdk grain size {header.grain_sectors} is not a power of two")
    desc_start, desc_len = header.descriptor_offset * SECTOR, header.descriptor_sectors * SECTOR
    descriptor = ""
    if header.descriptor_offset == 0 or desc_len == 0:
        problems.append("vmdk has no embedded descriptor")
    elif desc_len > VMDK_DESCRIPTOR_MAX or desc_start > VMDK_DESCRIPTOR_MAX or desc_start + desc_len > size:
        problems.append(f"vmdk descriptor ({desc_len} bytes at {desc_start}) is too big, too far or beyond the file")
    else:
        if desc_start + desc_len > len(head):  # descriptor beyond the first read: fetch the rest (< 2 MiB)
            head += _read_upto(stream, desc_start + desc_len - len(head))
        raw = head[desc_start : desc_start + desc_len]
        descriptor = raw.split(b"\0", 1)[0].decode("ascii", errors="replace")
    subformat, extent_problems = _descriptor_problems(descriptor) if descriptor else ("", [])
    problems.extend(extent_problems)
    if subformat == "streamOptimized":
        if header.version != 3:
            problems.append(f"streamOptimized vmdk has header version {header.version}, consumers need 3")
        if not header.flags & _VMDK_FLAG_COMPRESSED or not header.flags & _VMDK_FLAG_MARKERS:
            problems.append(f"streamOptimized vmdk lacks the compressed/markers flags ({header.flags:#x})")
        if header.compress_algorithm != 1:
            problems.append(f"streamOptimized vmdk compression algorithm {header.compress_algorithm} is not deflate")
    return DiskInspection(DiskFormat.VMDK, header.capacity_sectors * SECTOR, subformat, header.version, tuple(problems))


def _descriptor_problems(text: str) -> tuple[str, list[str]]:
    """The createType and the problems of an embedded descriptor: one sparse extent, no parent, no paths."""
    problems: list[str] = []
    create_type = ""
    extents = 0
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        extent = _VMDK_EXTENT.match(line)
        if extent:
            extents += 1
            kind, name = extent.group(3), extent.group(4) or ""
            if kind != "SPARSE":
                problems.append(f"vmdk descriptor line {number}: {kind} extent (only the embedded sparse extent)")
            if "/" in name or "\\" in name or name.startswith("json:"):
                problems.append(f"vmdk descriptor line {number}: extent names a path {name!r} (CVE-2022-47951)")
            continue
        if not _VMDK_LINE.match(line):
            problems.append(f"vmdk descriptor line {number}: unexpected {line[:60]!r}")
            continue
        if line.startswith("createType="):
            create_type = line.split("=", 1)[1].strip('"')
    if create_type not in ("streamOptimized", "monolithicSparse"):
        problems.append(f"vmdk createType {create_type or '(none)'!r} is not streamOptimized or monolithicSparse")
    if extents != 1:
        problems.append(f"vmdk descriptor has {extents} extents (exactly one expected)")
    return create_type, problems
