"""A strict streaming reader of hosted sparse VMDK extents (VMware "Virtual Disk Format 5.0").

``check_extent`` walks a streamOptimized extent from its first grain to the end-of-stream marker,
inflates EVERY grain (never more than one grain's bytes of output), and then checks the grain
directory and grain tables against the file and against the grains and markers actually seen. A
monolithicSparse extent (raw grains) gets the same table checks. The work is linear in the size of
the extent: every metadata structure must lie inside it, tables may not overlap, and each problem
stops the walk after ``max_problems`` lines.

Layout facts (the spec, and what ``qemu-img convert -O vmdk -o subformat=streamOptimized`` writes):
- sector 0: the 512-byte ``SparseExtentHeader`` (little-endian, packed); its gdOffset may be
  ``GD_AT_END``, and then a footer (a copy of the header with the real gdOffset) sits in the last
  three sectors: footer marker, footer, end-of-stream marker;
- from overHead on: grains, each a 12-byte marker (uint64 LBA in sectors, uint32 compressed size)
  and a zlib stream, padded to a sector; metadata markers (uint64 sectors, uint32 0, uint32 type) for
  end-of-stream (0), grain table (1), grain directory (2) and footer (3), each followed by its sectors;
- a grain table entry holds the sector of the grain (of its marker when compressed); qemu puts
  the directory and the tables inside the overhead, a true stream puts them after GT/GD markers.

Pure: no settings, only the stream it is given; inflation may run on a caller's thread pool
(CPython's zlib releases the GIL).
"""

from __future__ import annotations

import struct
import sys
import zlib
from array import array
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import BinaryIO

SECTOR = 512
MAGIC = b"KDMV"
GD_AT_END = 0xFFFFFFFFFFFFFFFF
FLAG_NL_DETECT = 1 << 0
FLAG_ZERO_GRAIN = 1 << 2  # a grain table entry of 1 means "a grain of zeros"
FLAG_COMPRESSED = 1 << 16
FLAG_MARKERS = 1 << 17
COMPRESS_DEFLATE = 1
GTES_PER_GT = 512
MIN_GRAIN_SECTORS, MAX_GRAIN_SECTORS = 8, 2048  # 4 KiB .. 1 MiB; VMware and qemu write 128 (64 KiB)
MARKER_EOS, MARKER_GT, MARKER_GD, MARKER_FOOTER = 0, 1, 2, 3
MARKER_NAMES = {MARKER_GT: "grain table", MARKER_GD: "grain directory", MARKER_FOOTER: "footer"}
CHUNK = 4 * 1024 * 1024
_NL_CHECK = b"\n \r\n"
_BIG_ENDIAN = sys.byteorder == "big"
_HEADER = struct.Struct("<4sIIQQQQIQQQB4sH")  # through compressAlgorithm (79 bytes)


class VmdkError(ValueError):
    """The extent cannot be read at all (one line: what and where)."""


@dataclass(frozen=True)
class SparseHeader:
    version: int
    flags: int
    capacity: int  # sectors
    grain_size: int  # sectors
    descriptor_offset: int
    descriptor_size: int
    gtes_per_gt: int
    rgd_offset: int
    gd_offset: int
    overhead: int  # sectors before the first grain
    unclean_shutdown: int
    check_chars: bytes
    compress_algorithm: int

    @property
    def compressed(self) -> bool:
        return bool(self.flags & FLAG_COMPRESSED)

    @property
    def grain_bytes(self) -> int:
        return self.grain_size * SECTOR

    @property
    def grains(self) -> int:
        return -(-self.capacity // self.grain_size) if self.grain_size else 0

    @property
    def gd_entries(self) -> int:
        return -(-self.grains // self.gtes_per_gt) if self.gtes_per_gt else 0


def parse_header(block: bytes) -> SparseHeader:
    """The fields of a sparse extent header; ``VmdkError`` if it is not one."""
    if len(block) < SECTOR or block[:4] != MAGIC:
        raise VmdkError("no sparse extent header (magic 'KDMV')")
    fields = _HEADER.unpack_from(block)
    return SparseHeader(*fields[1:])


def header_problems(h: SparseHeader, size: int, max_capacity: int, where: str = "header") -> list[str]:
    """Every field a reader would trip on, checked against the extent's ``size`` in bytes."""
    problems: list[str] = []
    sectors = size // SECTOR
    if h.version not in (1, 2, 3):
        problems.append(f"{where}: version {h.version} is not 1, 2 or 3")
    if h.flags & FLAG_NL_DETECT and h.check_chars != _NL_CHECK:
        problems.append(f"{where}: end-of-line check characters {h.check_chars!r} (a text-mode transfer?)")
    if not MIN_GRAIN_SECTORS <= h.grain_size <= MAX_GRAIN_SECTORS or h.grain_size & (h.grain_size - 1):
        problems.append(
            f"{where}: grain size {h.grain_size} sectors is not a power of two in "
            f"{MIN_GRAIN_SECTORS}..{MAX_GRAIN_SECTORS}"
        )
    if h.gtes_per_gt != GTES_PER_GT:
        problems.append(f"{where}: {h.gtes_per_gt} entries per grain table (readers need {GTES_PER_GT})")
    if h.capacity == 0:
        problems.append(f"{where}: capacity is 0 sectors")
    elif h.capacity * SECTOR > max_capacity:
        problems.append(f"{where}: capacity {h.capacity * SECTOR} bytes is more than the {max_capacity} allowed")
    if h.compressed and h.compress_algorithm != COMPRESS_DEFLATE:
        problems.append(f"{where}: compression algorithm {h.compress_algorithm} is not deflate (1)")
    if not h.compressed and h.flags & FLAG_MARKERS:
        problems.append(f"{where}: markers without compressed grains")
    if h.overhead > sectors or h.overhead < h.descriptor_offset + h.descriptor_size:
        problems.append(f"{where}: overHead {h.overhead} sectors is beyond the extent or inside the descriptor")
    if h.gd_offset != GD_AT_END and (h.gd_offset == 0 or h.gd_offset >= sectors):
        problems.append(f"{where}: grain directory offset {h.gd_offset} is outside the extent ({sectors} sectors)")
    return problems


@dataclass
class ExtentReport:
    """What the walk saw; ``problems`` empty means every grain inflated and every table checks out."""

    header: SparseHeader | None = None
    grains: int = 0
    inflated_bytes: int = 0
    problems: list[str] = field(default_factory=list)


class _Stop(Exception):
    """Enough problems: the extent is refused, reading on would only cost time."""


@dataclass
class _Walk:
    """Grains (grain index and marker sector, ascending) and metadata markers met on the stream."""

    grain_index: array[int] = field(default_factory=lambda: array("Q"))
    grain_sector: array[int] = field(default_factory=lambda: array("Q"))
    metadata: dict[int, tuple[int, int]] = field(default_factory=dict)  # data sector -> (type, sectors)
    footer: SparseHeader | None = None
    end: int = 0  # byte offset just past the end-of-stream marker


class _Reader:
    """Bounded reads of ``[start, start + size)`` of ``f``, through one chunk kept in memory."""

    def __init__(self, f: BinaryIO, start: int, size: int, chunk: int) -> None:
        self.f, self.start, self.size, self.chunk = f, start, size, chunk
        self.buf, self.buf_pos = b"", 0

    def view(self, pos: int, n: int) -> memoryview:
        """``n`` bytes at ``pos`` (the caller checked ``pos + n <= size``)."""
        if pos < self.buf_pos or pos + n > self.buf_pos + len(self.buf):
            want = min(max(n, self.chunk), self.size - pos)
            self.f.seek(self.start + pos)
            self.buf, self.buf_pos = self.f.read(want), pos
            if len(self.buf) < n:
                raise VmdkError(f"short read at byte {pos} (the file changed while being read?)")
        off = pos - self.buf_pos
        return memoryview(self.buf)[off : off + n]

    def read(self, pos: int, n: int) -> bytes:
        self.f.seek(self.start + pos)
        data = self.f.read(n)
        if len(data) < n:
            raise VmdkError(f"short read at byte {pos} (the file changed while being read?)")
        return data


def check_extent(
    f: BinaryIO,
    start: int,
    size: int,
    *,
    max_capacity: int,
    pool: Executor | None = None,
    workers: int = 2,
    max_problems: int = 20,
    chunk: int = CHUNK,
) -> ExtentReport:
    """Walk the extent at ``[start, start + size)`` of ``f``; never raises for a bad extent."""
    report = ExtentReport()
    reader = _Reader(f, start, size, chunk)

    def problem(text: str) -> None:
        report.problems.append(text)
        if len(report.problems) >= max_problems:
            report.problems.append(f"... stopped after {max_problems} problems")
            raise _Stop

    try:
        if size < SECTOR:
            raise VmdkError(f"{size} bytes is too small for a sparse extent header")
        header = parse_header(reader.read(0, SECTOR))
        report.header = header
        for p in header_problems(header, size, max_capacity):
            problem(p)
        if report.problems:
            return report
        walk = _Walk()
        if header.compressed:
            if not header.flags & FLAG_MARKERS:
                problem("compressed grains without markers are not supported (not streamOptimized)")
                return report
            _walk_stream(reader, header, walk, report, problem, pool, workers)
            if report.problems:
                return report
            header = _effective_header(header, walk, size, problem)
        elif header.gd_offset == GD_AT_END:
            problem("grain directory at the end without compressed grains")
        if not report.problems:
            _check_tables(reader, header, walk, size, problem)
    except _Stop:
        pass
    except VmdkError as e:
        report.problems.append(str(e))
    return report


def _walk_stream(
    reader: _Reader,
    h: SparseHeader,
    walk: _Walk,
    report: ExtentReport,
    problem: Callable[[str], None],
    pool: Executor | None,
    workers: int,
) -> None:
    size = reader.size
    grain_bytes, capacity_bytes = h.grain_bytes, h.capacity * SECTOR
    max_compressed = 2 * grain_bytes - 12  # qemu reads at most two grains' worth of marker and data
    pending: deque[Future[tuple[int, list[str]]]] = deque()
    batch: list[tuple[int, int, memoryview]] = []
    batch_bytes = 0
    last_lba = -1

    def settle(keep: int) -> None:
        while len(pending) > keep:
            inflated, problems = pending.popleft().result()
            report.inflated_bytes += inflated
            for p in problems:
                problem(p)

    def flush() -> None:
        nonlocal batch, batch_bytes
        if not batch:
            return
        if pool is None:
            inflated, problems = _inflate(batch, grain_bytes, capacity_bytes)
            report.inflated_bytes += inflated
            for p in problems:
                problem(p)
        else:
            pending.append(pool.submit(_inflate, batch, grain_bytes, capacity_bytes))
            settle(2 * workers)
        batch, batch_bytes = [], 0

    pos = h.overhead * SECTOR
    try:
        while True:
            if pos == size and h.gd_offset != GD_AT_END:
                walk.end = size  # qemu-img ends its streams here, without an end-of-stream marker
                return
            if pos + SECTOR > size:
                problem(f"no end-of-stream marker (the stream stops at byte {pos} of {size})")
                return
            marker = reader.view(pos, SECTOR)
            lba, length = struct.unpack_from("<QI", marker)
            if length == 0:
                kind = struct.unpack_from("<I", marker, 12)[0]
                if kind == MARKER_EOS:
                    if lba != 0 or any(marker):
                        problem(f"end-of-stream marker at byte {pos} is not all zeros")
                    walk.end = pos + SECTOR
                    return
                if kind not in MARKER_NAMES:
                    problem(f"unknown marker type {kind} at byte {pos}")
                    return
                data = pos + SECTOR
                if lba == 0 or lba > (size - data) // SECTOR:
                    problem(f"{MARKER_NAMES[kind]} marker at byte {pos} claims {lba} sectors, beyond the extent")
                    return
                walk.metadata[data // SECTOR] = (kind, lba)
                if kind == MARKER_FOOTER:
                    walk.footer = _footer(reader, data, lba, h, problem)
                pos = data + lba * SECTOR
                continue
            where = f"grain at byte {pos} (LBA {lba})"
            if lba % h.grain_size or lba * SECTOR >= capacity_bytes:
                problem(f"{where}: LBA is not a grain boundary inside the capacity ({h.capacity} sectors)")
                return
            if lba <= last_lba:
                problem(f"{where}: LBA does not increase (previous grain at LBA {last_lba})")
                return
            if length > max_compressed or pos + 12 + length > size:
                problem(f"{where}: compressed size {length} is beyond the grain bound or the extent")
                return
            last_lba = lba
            walk.grain_index.append(lba // h.grain_size)
            walk.grain_sector.append(pos // SECTOR)
            if batch and reader.buf_pos + len(reader.buf) < pos + 12 + length:
                flush()  # the next view replaces the chunk: hand the grains in this one to the pool
            batch.append((lba, pos, reader.view(pos + 12, length)))
            batch_bytes += length
            if batch_bytes >= 1024 * 1024:
                flush()
            pos += -(-(12 + length) // SECTOR) * SECTOR
    finally:
        try:
            flush()
            settle(0)
        finally:
            for future in pending:
                future.cancel()
            report.grains = len(walk.grain_index)


def _inflate(batch: list[tuple[int, int, memoryview]], grain_bytes: int, capacity_bytes: int) -> tuple[int, list[str]]:
    """Inflate each grain into at most ``grain_bytes``; the reasons a grain cannot be read."""
    problems: list[str] = []
    total = 0
    for lba, pos, data in batch:
        where = f"grain at byte {pos} (LBA {lba})"
        expected = min(grain_bytes, capacity_bytes - lba * SECTOR)
        inflater = zlib.decompressobj()
        try:
            out = len(inflater.decompress(data, grain_bytes))
            if not inflater.eof:
                if inflater.decompress(inflater.unconsumed_tail, 1):
                    problems.append(f"{where}: inflates to more than the grain size ({grain_bytes} bytes)")
                    continue
                if not inflater.eof:
                    problems.append(f"{where}: deflate stream is truncated")
                    continue
        except zlib.error as e:
            problems.append(f"{where}: does not inflate ({e})")
            continue
        if any(inflater.unused_data):
            problems.append(f"{where}: {len(inflater.unused_data)} bytes after the deflate stream")
        elif out < expected:
            problems.append(f"{where}: inflates to {out} bytes, the grain needs {expected}")
        total += out
    return total, problems


def _footer(reader: _Reader, data: int, sectors: int, h: SparseHeader, problem: Callable[[str], None]) -> SparseHeader:
    if sectors != 1:
        problem(f"footer marker at byte {data - SECTOR} claims {sectors} sectors (1 expected)")
    try:
        footer = parse_header(reader.read(data, SECTOR))
    except VmdkError as e:
        problem(f"footer at byte {data}: {e}")
        raise _Stop from e
    same = ("version", "flags", "capacity", "grain_size", "gtes_per_gt", "compress_algorithm")
    for name in same:
        mine, theirs = getattr(footer, name), getattr(h, name)
        if mine != theirs:
            problem(f"footer at byte {data}: {name} {mine} differs from the header's {theirs}")
    return footer


def _effective_header(h: SparseHeader, walk: _Walk, size: int, problem: Callable[[str], None]) -> SparseHeader:
    """The header whose gdOffset counts: the footer's when the header defers to it (GD_AT_END)."""
    if h.gd_offset != GD_AT_END:
        return h
    footer_marker = size - 3 * SECTOR
    if walk.footer is None or walk.metadata.get(footer_marker // SECTOR + 1, (None,))[0] != MARKER_FOOTER:
        problem(f"grain directory at the end, but no footer in the last three sectors (at byte {footer_marker})")
        raise _Stop
    if walk.end != size:
        problem(f"{size - walk.end} bytes after the end-of-stream marker (readers look for the footer at the end)")
    if walk.footer.gd_offset in (0, GD_AT_END) or walk.footer.gd_offset >= size // SECTOR:
        problem(f"footer: grain directory offset {walk.footer.gd_offset} is outside the extent")
        raise _Stop
    return walk.footer


def _check_tables(reader: _Reader, h: SparseHeader, walk: _Walk, size: int, problem: Callable[[str], None]) -> None:
    """The grain directory and every grain table: inside the extent, in the overhead or right after their
    markers, not overlapping, and pointing at exactly the grains the walk met (or raw grains in bounds)."""
    if h.compressed:
        for pos in range(walk.end, size, CHUNK):
            if any(reader.view(pos, min(CHUNK, size - pos))):
                problem(f"data after the end-of-stream marker (byte {walk.end})")
                break
    gd_bytes = h.gd_entries * 4
    gd_sectors = -(-gd_bytes // SECTOR)
    regions: list[tuple[int, int, str]] = []  # (first sector, sectors, name) of every table

    def placed(sector: int, sectors: int, kind: int, name: str) -> bool:
        if sector + sectors > size // SECTOR:
            problem(f"{name} at sector {sector} ({sectors} sectors) runs past the end of the extent")
            return False
        in_overhead = h.descriptor_offset + h.descriptor_size <= sector and sector + sectors <= h.overhead
        meta = walk.metadata.get(sector)
        after_marker = meta is not None and meta[0] == kind and meta[1] >= sectors
        if not in_overhead and not after_marker:
            problem(f"{name} at sector {sector} is neither in the overhead nor after a {MARKER_NAMES[kind]} marker")
            return False
        regions.append((sector, sectors, name))
        return True

    if not placed(h.gd_offset, gd_sectors, MARKER_GD, "grain directory"):
        return
    directory = array("I", reader.read(h.gd_offset * SECTOR, gd_bytes))
    if _BIG_ENDIAN:
        directory.byteswap()
    gt_sectors = GTES_PER_GT * 4 // SECTOR
    for i, gt in enumerate(directory):
        if gt and not placed(gt, gt_sectors, MARKER_GT, f"grain table {i}"):
            return
    regions.sort()
    for (a, n, name), (b, _, other) in zip(regions, regions[1:], strict=False):
        if b < a + n:
            problem(f"{other} at sector {b} overlaps {name} at sector {a}")
            return
    _match_grains(reader, h, walk, directory, size, problem)


def _match_grains(
    reader: _Reader, h: SparseHeader, walk: _Walk, directory: array[int], size: int, problem: Callable[[str], None]
) -> None:
    zero_grain = 1 if h.flags & FLAG_ZERO_GRAIN else 0
    indexes, sectors = walk.grain_index, walk.grain_sector
    j, seen = 0, len(indexes)
    limit = size // SECTOR
    table_bytes = GTES_PER_GT * 4
    empty = bytes(table_bytes)
    for i, gt in enumerate(directory):
        first, last = i * GTES_PER_GT, min((i + 1) * GTES_PER_GT, h.grains)
        raw = reader.read(gt * SECTOR, table_bytes) if gt else empty
        if raw == empty and (j >= seen or indexes[j] >= last):
            continue
        table = array("I", raw)
        if _BIG_ENDIAN:
            table.byteswap()
        if max(table) <= zero_grain and (j >= seen or indexes[j] >= last):
            continue
        for k, entry in enumerate(table):
            g = first + k
            while j < seen and indexes[j] < g:
                problem(f"grain at sector {sectors[j]} (LBA {indexes[j] * h.grain_size}) is in no grain table")
                j += 1
            walked = j < seen and indexes[j] == g
            if g >= last:
                if entry:
                    problem(f"grain table {i} entry {k} is set beyond the capacity")
                continue
            if h.compressed:
                if walked:
                    if entry <= zero_grain:
                        problem(f"grain at sector {sectors[j]} (LBA {g * h.grain_size}) is in no grain table")
                    elif entry != sectors[j]:
                        problem(f"grain table {i} entry {k} says sector {entry}, the grain for LBA "
                                f"{g * h.grain_size} is at sector {sectors[j]}")  # fmt: skip
                    j += 1
                elif entry > zero_grain:
                    problem(f"grain table {i} entry {k} points at sector {entry}, where the stream has no grain "
                            f"for LBA {g * h.grain_size}")  # fmt: skip
            elif entry > zero_grain and (entry < h.overhead or entry + h.grain_size > limit):
                problem(f"grain table {i} entry {k} points at sector {entry}, outside the grain area "
                        f"({h.overhead}..{limit - h.grain_size})")  # fmt: skip
    while j < seen:
        problem(f"grain at sector {sectors[j]} (LBA {indexes[j] * h.grain_size}) is in no grain table")
        j += 1
