"""A tiny streamOptimized writer for tests: grains, then GT and GD markers, a footer and the
end-of-stream marker (the "true stream" layout of VMware's Virtual Disk Format 5.0, gdOffset =
GD_AT_END), with hooks to build every kind of hostile extent. Not the product's writer."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

SECTOR = 512
GRAIN = 128  # sectors
GD_AT_END = 0xFFFFFFFFFFFFFFFF
FLAGS = 0x30003  # newline test, redundant GD, compressed grains, markers


def header(capacity: int, gd_offset: int, overhead: int, *, flags: int = FLAGS, grain: int = GRAIN) -> bytes:
    fields = struct.pack(
        "<4sIIQQQQIQQQB4sH", b"KDMV", 3, flags, capacity, grain, 1, 1, 512, 0, gd_offset, overhead, 0, b"\n \r\n", 1
    )
    return fields.ljust(SECTOR, b"\0")


def descriptor(capacity: int, name: str = "disk.vmdk") -> bytes:
    text = (
        '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="streamOptimized"\n'
        f'RW {capacity} SPARSE "{name}"\nddb.adapterType = "ide"\n'
    )
    return text.encode().ljust(SECTOR, b"\0")


def pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % SECTOR)


def grain_marker(lba: int, payload: bytes) -> bytes:
    return pad(struct.pack("<QI", lba, len(payload)) + payload)


def meta_marker(sectors: int, kind: int) -> bytes:
    return struct.pack("<QII", sectors, 0, kind).ljust(SECTOR, b"\0")


@dataclass
class Stream:
    """The disk's contents by LBA (each a grain's worth of bytes, or a raw payload to store as is)."""

    capacity: int  # sectors
    grains: dict[int, bytes] = field(default_factory=dict)
    raw_payloads: dict[int, bytes] = field(default_factory=dict)  # LBA -> compressed bytes as given

    def build(self, *, gt_entry_edit: dict[int, int] | None = None, footer_gd: int | None = None) -> bytes:
        overhead = 2
        out = bytearray(header(self.capacity, GD_AT_END, overhead) + descriptor(self.capacity))
        table: dict[int, int] = {}
        for lba in sorted({*self.grains, *self.raw_payloads}):
            payload = self.raw_payloads.get(lba)
            if payload is None:
                payload = zlib.compress(self.grains[lba])
            table[lba // GRAIN] = len(out) // SECTOR
            out += grain_marker(lba, payload)
        table.update(gt_entry_edit or {})
        grains = -(-self.capacity // GRAIN)
        directory = []
        for first in range(0, grains, 512):
            entries = [table.get(g, 0) for g in range(first, min(first + 512, grains))]
            out += meta_marker(4, 1)
            directory.append(len(out) // SECTOR)
            out += struct.pack(f"<{len(entries)}I", *entries).ljust(4 * SECTOR, b"\0")
        gd_sectors = -(-len(directory) * 4 // SECTOR)
        out += meta_marker(gd_sectors, 2)
        gd = len(out) // SECTOR
        out += pad(struct.pack(f"<{len(directory)}I", *directory))
        out += meta_marker(1, 3)
        out += header(self.capacity, gd if footer_gd is None else footer_gd, overhead)
        out += meta_marker(0, 0)
        return bytes(out)
