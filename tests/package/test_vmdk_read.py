"""The streaming VMDK reader inflates every grain and checks every table: good extents from qemu-img and
from a true-stream writer pass (and qemu-img reads them the same), each hostile extent is refused with
its own one-line reason."""

from __future__ import annotations

import io
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline.formats.vmdk_read import GD_AT_END, ExtentReport, check_extent, parse_header

from .helpers import sh
from .vmdk_stream import GRAIN, SECTOR, Stream, grain_marker, header

TIB = 2**40
GRAIN_BYTES = GRAIN * SECTOR


def check(data: bytes, max_capacity: int = 16 * TIB, pool: ThreadPoolExecutor | None = None) -> ExtentReport:
    return check_extent(io.BytesIO(data), 0, len(data), max_capacity=max_capacity, pool=pool)


@pytest.fixture(scope="module")
def qemu_vmdk(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """qemu-img's streamOptimized layout: tables in the overhead, random and patterned grains, holes,
    and a last partial grain (capacity 20483 sectors)."""
    tmp = tmp_path_factory.mktemp("qemu")
    raw = tmp / "src.raw"
    with open(raw, "wb") as f:
        f.truncate(10 * 2**20 + 1536)
        f.write(os.urandom(70000))
        f.seek(5 * 2**20)
        f.write(b"pattern " * 9000)
        f.seek(10 * 2**20)
        f.write(b"x" * 1536)
    sh("qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", raw, tmp / "d.vmdk")
    return (tmp / "d.vmdk").read_bytes()


def grains_of(data: bytes) -> list[tuple[int, int, int]]:
    """(byte offset, LBA, compressed size) of each grain of an extent, walked here independently."""
    h = parse_header(data)
    pos, found = h.overhead * SECTOR, []
    while pos + SECTOR <= len(data):
        lba, size = struct.unpack_from("<QI", data, pos)
        if size == 0:
            if struct.unpack_from("<I", data, pos + 12)[0] == 0:
                break
            pos += SECTOR + lba * SECTOR
            continue
        found.append((pos, lba, size))
        pos += -(-(12 + size) // SECTOR) * SECTOR
    return found


def put(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


def test_qemu_img_streams_pass_with_every_grain_inflated(qemu_vmdk: bytes) -> None:
    with ThreadPoolExecutor(2) as pool:
        report = check(qemu_vmdk, pool=pool)
    assert report.problems == []
    assert report.grains == len(grains_of(qemu_vmdk)) == 5
    assert report.inflated_bytes == 4 * GRAIN_BYTES + 1536  # random x2, the pattern across two, a partial last
    assert check(qemu_vmdk).problems == []  # the same without a pool


def test_a_true_stream_passes_and_qemu_reads_it_the_same(tmp_path: Path) -> None:
    """The GD_AT_END layout (GT/GD markers, footer, end-of-stream): our reader and qemu-img agree."""
    capacity = 600 * GRAIN + 5  # two grain tables, a last partial grain
    stream = Stream(capacity, {0: os.urandom(GRAIN_BYTES), 513 * GRAIN: b"b" * GRAIN_BYTES,
                               600 * GRAIN: b"c" * 5 * SECTOR})  # fmt: skip
    data = stream.build()
    assert parse_header(data).gd_offset == GD_AT_END
    report = check(data)
    assert report.problems == [] and report.grains == 3
    (tmp_path / "s.vmdk").write_bytes(data)
    raw = bytearray(capacity * SECTOR)
    for lba, content in stream.grains.items():
        raw[lba * SECTOR : lba * SECTOR + len(content)] = content
    (tmp_path / "s.raw").write_bytes(bytes(raw))
    sh("qemu-img", "compare", "-f", "vmdk", "-F", "raw", tmp_path / "s.vmdk", tmp_path / "s.raw")


def test_garbage_grain_data_is_refused(qemu_vmdk: bytes) -> None:
    pos, lba, size = grains_of(qemu_vmdk)[1]
    data = put(qemu_vmdk, pos + 12, b"\xff" * size)
    assert check(data).problems == [
        f"grain at byte {pos} (LBA {lba}): does not inflate (Error -3 while decompressing data: incorrect header check)"
    ]


def test_a_flipped_bit_inside_a_grain_is_refused(qemu_vmdk: bytes) -> None:
    """The zlib stream's own checksum (adler32) catches what a header check never reads."""
    pos, lba, size = grains_of(qemu_vmdk)[0]
    data = put(qemu_vmdk, pos + 12 + size - 1, bytes([qemu_vmdk[pos + 12 + size - 1] ^ 1]))
    assert check(data).problems == [
        f"grain at byte {pos} (LBA {lba}): does not inflate (Error -3 while decompressing data: incorrect data check)"
    ]


def test_a_grain_that_inflates_past_the_grain_size_is_refused() -> None:
    bomb = zlib.compress(b"\0" * (GRAIN_BYTES * 2))
    data = Stream(GRAIN * 2, raw_payloads={0: bomb}).build()
    assert check(data).problems == [
        f"grain at byte 1024 (LBA 0): inflates to more than the grain size ({GRAIN_BYTES} bytes)"
    ]


def test_a_short_grain_is_refused() -> None:
    data = Stream(GRAIN * 2, raw_payloads={0: zlib.compress(b"a" * 1000)}).build()
    assert check(data).problems == [
        f"grain at byte 1024 (LBA 0): inflates to 1000 bytes, the grain needs {GRAIN_BYTES}"
    ]


def test_a_truncated_deflate_stream_is_refused() -> None:
    data = Stream(GRAIN * 2, raw_payloads={0: zlib.compress(os.urandom(GRAIN_BYTES))[:-10]}).build()
    assert check(data).problems == ["grain at byte 1024 (LBA 0): deflate stream is truncated"]


def test_trailing_bytes_after_a_grain_stream_are_refused() -> None:
    data = Stream(GRAIN * 2, raw_payloads={0: zlib.compress(b"a" * GRAIN_BYTES) + b"evil"}).build()
    assert check(data).problems == ["grain at byte 1024 (LBA 0): 4 bytes after the deflate stream"]


def test_an_lba_beyond_the_capacity_is_refused() -> None:
    data = Stream(GRAIN * 2, raw_payloads={GRAIN * 2: zlib.compress(b"a" * GRAIN_BYTES)}).build()
    assert check(data).problems == [
        f"grain at byte 1024 (LBA {GRAIN * 2}): LBA is not a grain boundary inside the capacity ({GRAIN * 2} sectors)"
    ]


def test_an_lba_off_the_grain_boundary_is_refused() -> None:
    data = Stream(GRAIN * 2, raw_payloads={3: zlib.compress(b"a" * GRAIN_BYTES)}).build()
    assert check(data).problems == [
        f"grain at byte 1024 (LBA 3): LBA is not a grain boundary inside the capacity ({GRAIN * 2} sectors)"
    ]


def test_grains_out_of_order_are_refused(qemu_vmdk: bytes) -> None:
    (pos0, lba0, _), (pos1, _, _) = grains_of(qemu_vmdk)[:2]
    data = put(qemu_vmdk, pos1, struct.pack("<Q", lba0))
    assert check(data).problems == [
        f"grain at byte {pos1} (LBA {lba0}): LBA does not increase (previous grain at LBA {lba0})"
    ]


def test_a_compressed_size_past_the_end_is_refused(qemu_vmdk: bytes) -> None:
    pos, lba, _ = grains_of(qemu_vmdk)[-1]
    size = 2 * GRAIN_BYTES - 12
    data = put(qemu_vmdk, pos + 8, struct.pack("<I", size))
    assert check(data).problems == [
        f"grain at byte {pos} (LBA {lba}): compressed size {size} is beyond the grain bound or the extent"
    ]


def test_a_grain_directory_past_the_end_is_refused(qemu_vmdk: bytes) -> None:
    data = put(qemu_vmdk, 56, struct.pack("<Q", 2**40))
    sectors = len(qemu_vmdk) // SECTOR
    assert check(data).problems == [f"header: grain directory offset {2**40} is outside the extent ({sectors} sectors)"]


def test_a_grain_table_past_the_end_is_refused(qemu_vmdk: bytes) -> None:
    gd = parse_header(qemu_vmdk).gd_offset * SECTOR
    data = put(qemu_vmdk, gd, struct.pack("<I", 0x7FFFFFF0))
    assert check(data).problems == [f"grain table 0 at sector {0x7FFFFFF0} (4 sectors) runs past the end of the extent"]


def test_a_grain_table_inside_the_grains_is_refused(qemu_vmdk: bytes) -> None:
    """A table pointing into grain data (no GT marker there, outside the overhead) could say anything."""
    gd = parse_header(qemu_vmdk).gd_offset * SECTOR
    pos = grains_of(qemu_vmdk)[1][0] // SECTOR
    data = put(qemu_vmdk, gd, struct.pack("<I", pos))
    assert check(data).problems == [
        f"grain table 0 at sector {pos} is neither in the overhead nor after a grain table marker"
    ]


def test_two_grain_tables_on_one_sector_are_refused() -> None:
    """Shared tables would let a small file name a huge number of grains."""
    data = bytearray(Stream(GRAIN * 1024, {0: b"a" * GRAIN_BYTES}).build())
    h = parse_header(data[-1024:])
    first = struct.unpack_from("<I", data, h.gd_offset * SECTOR)[0]
    struct.pack_into("<I", data, h.gd_offset * SECTOR + 4, first)
    assert check(bytes(data)).problems == [f"grain table 1 at sector {first} overlaps grain table 0 at sector {first}"]


def test_a_grain_table_entry_with_no_grain_is_refused() -> None:
    data = Stream(GRAIN * 4, {0: b"a" * GRAIN_BYTES}).build(gt_entry_edit={2: 3})
    assert check(data).problems == [
        f"grain table 0 entry 2 points at sector 3, where the stream has no grain for LBA {2 * GRAIN}"
    ]


def test_a_grain_in_no_table_is_refused() -> None:
    data = Stream(GRAIN * 4, {0: b"a" * GRAIN_BYTES, GRAIN: b"b" * GRAIN_BYTES}).build(gt_entry_edit={1: 0})
    assert check(data).problems == [f"grain at sector 3 (LBA {GRAIN}) is in no grain table"]


def test_a_missing_footer_is_refused() -> None:
    data = Stream(GRAIN * 2, {0: b"a" * GRAIN_BYTES}).build()
    cut = data[: -3 * SECTOR] + b"\0" * SECTOR  # footer marker and footer gone, end-of-stream kept
    assert check(cut).problems == [
        f"grain directory at the end, but no footer in the last three sectors (at byte {len(cut) - 3 * SECTOR})"
    ]


def test_a_footer_that_disagrees_with_the_header_is_refused() -> None:
    data = bytearray(Stream(GRAIN * 2, {0: b"a" * GRAIN_BYTES}).build())
    footer = len(data) - 2 * SECTOR
    struct.pack_into("<Q", data, footer + 12, GRAIN * 4)  # a bigger capacity
    assert check(bytes(data)).problems == [
        f"footer at byte {footer}: capacity {GRAIN * 4} differs from the header's {GRAIN * 2}"
    ]


def test_data_after_the_end_of_stream_is_refused(qemu_vmdk: bytes) -> None:
    data = qemu_vmdk + b"\0" * SECTOR + b"payload".ljust(SECTOR, b"\0")
    end = grains_of(qemu_vmdk)[-1][0] + SECTOR  # the last grain fits in one sector; the marker follows
    assert check(data).problems == [f"data after the end-of-stream marker (byte {end + SECTOR})"]


def test_an_unknown_marker_is_refused() -> None:
    data = Stream(GRAIN * 2, {0: b"a" * GRAIN_BYTES}).build()
    pos = grains_of(data)[0][0] + (-(-(12 + grains_of(data)[0][2]) // SECTOR)) * SECTOR
    bad = put(data, pos, struct.pack("<QII", 1, 0, 9))
    assert check(bad).problems == [f"unknown marker type 9 at byte {pos}"]


def test_a_marker_claiming_more_sectors_than_the_file_is_refused() -> None:
    data = Stream(GRAIN * 2, {0: b"a" * GRAIN_BYTES}).build()
    pos = grains_of(data)[0][0] + (-(-(12 + grains_of(data)[0][2]) // SECTOR)) * SECTOR
    bad = put(data, pos, struct.pack("<Q", 2**60))
    assert check(bad).problems == [f"grain table marker at byte {pos} claims {2**60} sectors, beyond the extent"]


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        (20, struct.pack("<Q", 3), "header: grain size 3 sectors is not a power of two in 8..2048"),
        (20, struct.pack("<Q", 2**40), f"header: grain size {2**40} sectors is not a power of two in 8..2048"),
        (44, struct.pack("<I", 2**31), f"header: {2**31} entries per grain table (readers need 512)"),
        (12, struct.pack("<Q", 2**62), f"header: capacity {2**71} bytes is more than the {16 * TIB} allowed"),
        (12, struct.pack("<Q", 0), "header: capacity is 0 sectors"),
        (77, struct.pack("<H", 2), "header: compression algorithm 2 is not deflate (1)"),
        (73, b"\r\n\n\n", "header: end-of-line check characters b'\\r\\n\\n\\n' (a text-mode transfer?)"),
        (64, struct.pack("<Q", 2**50),
         f"header: overHead {2**50} sectors is beyond the extent or inside the descriptor"),
        (4, struct.pack("<I", 7), "header: version 7 is not 1, 2 or 3"),
    ],
    ids=["grain-3", "grain-huge", "gtes", "capacity-cap", "capacity-0", "compression", "newline", "overhead",
         "version"],
)  # fmt: skip
def test_hostile_header_fields_are_refused(qemu_vmdk: bytes, field: int, value: bytes, reason: str) -> None:
    assert check(put(qemu_vmdk, field, value)).problems == [reason]


def test_the_capacity_cap_follows_the_callers_limit(qemu_vmdk: bytes) -> None:
    capacity = parse_header(qemu_vmdk).capacity * SECTOR
    assert check(qemu_vmdk, max_capacity=capacity).problems == []
    assert check(qemu_vmdk, max_capacity=capacity - 1).problems == [
        f"header: capacity {capacity} bytes is more than the {capacity - 1} allowed"
    ]


def test_problems_stop_at_a_bound() -> None:
    """Thousands of bad grains cost twenty lines and stop the walk, not thousands of lines."""
    stream = Stream(GRAIN * 100, raw_payloads={GRAIN * i: b"\xff" * 20 for i in range(100)})
    problems = check(stream.build()).problems
    assert len(problems) == 21 and problems[-1] == "... stopped after 20 problems"


def test_not_a_sparse_extent() -> None:
    assert check(b"\0" * 4096).problems == ["no sparse extent header (magic 'KDMV')"]
    assert check(b"KDMV").problems == ["4 bytes is too small for a sparse extent header"]


def test_a_monolithic_sparse_extent_is_table_checked(tmp_path: Path) -> None:
    raw = tmp_path / "s.raw"
    raw.write_bytes(os.urandom(GRAIN_BYTES * 3))
    sh("qemu-img", "convert", "-f", "raw", "-O", "vmdk", raw, tmp_path / "s.vmdk")
    data = (tmp_path / "s.vmdk").read_bytes()
    assert check(data).problems == []
    h = parse_header(data)
    gt = struct.unpack_from("<I", data, h.gd_offset * SECTOR)[0] * SECTOR
    bad = put(data, gt + 4, struct.pack("<I", 2**30))
    assert check(bad).problems == [
        f"grain table 0 entry 1 points at sector {2**30}, outside the grain area "
        f"({h.overhead}..{len(data) // SECTOR - GRAIN})"
    ]


def test_grain_marker_helper_matches_header_layout() -> None:
    """Guard for the test writer itself: its header parses to the fields it was given."""
    h = parse_header(header(1000, 5, 2))
    assert (h.capacity, h.grain_size, h.gd_offset, h.overhead, h.gtes_per_gt) == (1000, GRAIN, 5, 2, 512)
    assert len(grain_marker(0, b"x" * 600)) == 2 * SECTOR
