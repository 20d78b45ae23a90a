"""Our streamOptimized VMDK writer against qemu-img: every disk shape the issue names (holes, all-zero
grains, a last partial grain, more than 4 GiB virtual, random data) passes `qemu-img check` and is
`qemu-img compare`-identical to its source; the layout is walked sector by sector as a streaming reader
would; with zlib the grains are byte-for-byte qemu-img's; output does not depend on the thread count."""

from __future__ import annotations

import array
import io
import json
import os
import random
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.formats.vmdk_write import (
    GD_AT_END,
    GRAIN,
    DataExtent,
    LibdeflateDeflater,
    StreamVmdk,
    VmdkWriteError,
    ZlibDeflater,
    check_extents,
    default_deflater,
    grain_runs,
    write_stream_vmdk,
)
from pipeline.package import formats, package_appliance
from pipeline.package.images import DiskFormat
from pipeline.package.verify import verify_ova
from tests.fuzzing import bounded

from .helpers import MIB, settings_for, sh

HEADER = struct.Struct("<4sIIQQQQIQQQB4sH")
SECTOR = 512


def raw_disk(path: Path, size: int, pieces: list[tuple[int, bytes]]) -> Path:
    """A sparse raw file of ``size`` bytes with ``pieces`` written at their offsets (the rest holes)."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in pieces:
            f.seek(offset)
            f.write(data)
    return path


def write_vmdk(source: Path, target: Path, fmt: DiskFormat = DiskFormat.RAW, adapter: str = "ide") -> Path:
    """The package stage's own path: qemu-img map, direct reads, our writer."""
    capacity = formats.virtual_size(source, fmt)
    disk = StreamVmdk(capacity, target.name, adapter, 0x1234ABCD)
    digest = formats.write_stream_vmdk(source, fmt, target, disk, target.parent)
    assert digest == __import__("hashlib").sha256(target.read_bytes()).hexdigest()
    return target


def assert_same_disk(source: Path, vmdk: Path, fmt: str = "raw") -> None:
    assert "No errors were found" in sh("qemu-img", "check", "-f", "vmdk", vmdk)
    assert "identical" in sh("qemu-img", "compare", "-f", fmt, "-F", "vmdk", source, vmdk)


def walk(data: bytes) -> tuple[list[tuple[str, int]], dict[int, bytes]]:
    """Read the VMDK as a stream reader does, from ``overHead`` to the end-of-stream marker: every
    record on a sector boundary, in order, nothing after. Returns the records and the inflated grains."""
    magic, version, flags, capacity, grain, desc_off, desc_sectors, gtes, rgd, gd, overhead, _, eol, algo = (
        HEADER.unpack_from(data)
    )
    assert (magic, version, flags, grain, gtes, rgd, gd, eol, algo) == (
        b"KDMV", 3, 0x30001, 128, 512, 0, GD_AT_END, b"\n \r\n", 1
    )  # fmt: skip
    assert (desc_off, desc_sectors, overhead) == (1, 20, 128)
    assert not data[21 * SECTOR : 128 * SECTOR].strip(b"\0")
    records: list[tuple[str, int]] = []
    grains: dict[int, bytes] = {}
    tables: dict[int, int] = {}
    position = overhead * SECTOR
    while True:
        assert position % SECTOR == 0
        lba, size, kind = struct.unpack_from("<QII", data, position)
        if size:  # a grain marker: LBA, compressed size, the zlib stream
            raw = zlib.decompress(data[position + 12 : position + 12 + size])
            assert len(raw) == GRAIN and lba % 128 == 0 and lba // 128 not in grains
            grains[lba // 128] = raw
            records.append(("grain", lba // 128))
            end = position + 12 + size
            assert not data[end : end + (-end % SECTOR)].strip(b"\0")
            position = end + (-end % SECTOR)
            continue
        assert not data[position + 16 : position + SECTOR].strip(b"\0")
        if kind == 0:  # end of stream: the last sector of the file
            assert lba == 0 and position + SECTOR == len(data)
            records.append(("eos", 0))
            break
        records.append(({1: "gt", 2: "gd", 3: "footer"}[kind], position // SECTOR + 1))
        if kind == 1:
            tables[position // SECTOR + 1] = lba
        position += SECTOR * (1 + lba)
    footer = HEADER.unpack_from(data, len(data) - 2 * SECTOR)
    assert footer[:9] == (magic, version, flags, capacity, grain, desc_off, desc_sectors, gtes, 0)
    assert records[-3:-1] == [("gd", footer[9]), ("footer", len(data) // SECTOR - 2)]
    directory = array.array("I", data[footer[9] * SECTOR : footer[9] * SECTOR + 4 * (-(-capacity // (128 * 512)))])
    seen = {}
    for t, gt in enumerate(directory):
        if gt:
            assert tables.pop(gt) == 4
            entries = array.array("I", data[gt * SECTOR : gt * SECTOR + 2048])
            seen.update({t * 512 + i: e for i, e in enumerate(entries) if e})
    assert not tables, "a grain table the directory does not list"
    assert sorted(seen) == sorted(grains)  # every grain in exactly one table entry, pointing at its marker
    for index, sector in seen.items():
        assert struct.unpack_from("<Q", data, sector * SECTOR)[0] == index * 128
    return records, grains


def content(grains: dict[int, bytes], capacity: int) -> bytes:
    out = bytearray(-(-capacity // GRAIN) * GRAIN)
    for index, raw in grains.items():
        out[index * GRAIN : (index + 1) * GRAIN] = raw
    return bytes(out[:capacity])


SHAPES = {
    # holes around data, a grain half data and half hole
    "holes": (16 * MIB, [(1 * MIB, b"\x5a" * 3 * MIB), (9 * MIB + 32 * 1024, b"tail" * 8192)]),
    # zeros written as data (not holes): never stored
    "zero-grains": (8 * MIB, [(0, b"\0" * 4 * MIB), (4 * MIB, b"x" * GRAIN), (5 * MIB, b"\0" * GRAIN)]),
    # virtual size not a multiple of 64 KiB: the last grain is partial, and holds data
    "partial-last-grain": (10 * MIB + 3 * SECTOR, [(10 * MIB, b"end!" * 384), (0, b"a" * 100)]),
    "random": (12 * MIB, [(0, random.Random(1).randbytes(6 * MIB))]),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_disk_shapes_check_and_compare_identical(tmp_path: Path, shape: str) -> None:
    size, pieces = SHAPES[shape]
    source = raw_disk(tmp_path / "src.raw", size, pieces)
    vmdk = write_vmdk(source, tmp_path / "disk.vmdk")
    assert_same_disk(source, vmdk)
    records, grains = walk(vmdk.read_bytes())
    assert content(grains, size) == source.read_bytes()
    expected = {i for i in range(-(-size // GRAIN)) if source.read_bytes()[i * GRAIN : (i + 1) * GRAIN].strip(b"\0")}
    assert set(grains) == expected  # all-zero grains and holes are not stored


def test_disk_larger_than_4_gib_with_data_past_4_gib(tmp_path: Path) -> None:
    size = 5 * 1024**3 + 7 * SECTOR  # also a partial last grain
    noise = random.Random(2).randbytes(MIB)
    pieces = [(0, b"boot" * 128), (4 * 1024**3 + 3 * MIB, noise), (size - 3 * SECTOR, b"z" * SECTOR)]
    source = raw_disk(tmp_path / "big.raw", size, pieces)
    vmdk = write_vmdk(source, tmp_path / "big.vmdk", adapter="lsilogic")
    assert_same_disk(source, vmdk)
    records, grains = walk(vmdk.read_bytes())
    past_4_gib = range((4 * 1024**3 + 3 * MIB) // GRAIN, (4 * 1024**3 + 4 * MIB) // GRAIN)
    assert sorted(grains) == [0, *past_4_gib, size // GRAIN]
    assert [kind for kind, _ in records].count("gt") == 3  # one per 32 MiB span that holds data
    head = vmdk.read_bytes()[: SECTOR * 21].decode("ascii", "replace")
    assert f'RW {size // SECTOR} SPARSE "big.vmdk"' in head
    assert 'ddb.adapterType = "lsilogic"' in head and 'ddb.geometry.heads = "255"' in head
    assert "CID=1234abcd\n" in head


def test_qcow2_source_is_read_in_place_and_compressed_qcow2_through_a_raw_view(tmp_path: Path) -> None:
    size, pieces = SHAPES["holes"]
    raw = raw_disk(tmp_path / "src.raw", size, pieces + [(14 * MIB, random.Random(3).randbytes(MIB))])
    plain, packed = tmp_path / "plain.qcow2", tmp_path / "packed.qcow2"
    sh("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, plain)
    sh("qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", raw, packed)
    assert formats.data_extents(plain, DiskFormat.QCOW2, size) is not None
    assert formats.data_extents(packed, DiskFormat.QCOW2, size) is None  # compressed clusters: no offsets
    for source in (plain, packed):
        (tmp_path / source.stem).mkdir()
        assert_same_disk(raw, write_vmdk(source, tmp_path / source.stem / "disk.vmdk", DiskFormat.QCOW2))
    # the same bytes, whichever way the data was read
    assert (tmp_path / "plain" / "disk.vmdk").read_bytes() == (tmp_path / "packed" / "disk.vmdk").read_bytes()


def test_zlib_grains_are_byte_for_byte_qemu_imgs(tmp_path: Path) -> None:
    """With zlib at level 6 every grain record is exactly what qemu-img writes for the same grain."""
    size, pieces = SHAPES["holes"]
    rng = random.Random(4)
    pieces = pieces + [(12 * MIB, bytes(rng.choice(b"abcdefgh \n") for _ in range(2 * MIB)))]
    source = raw_disk(tmp_path / "src.raw", size, pieces)
    ours = io.BytesIO()
    extents = formats.data_extents(source, DiskFormat.RAW, size)
    assert extents is not None
    fd = os.open(source, os.O_RDONLY)
    try:
        write_stream_vmdk(ours, StreamVmdk(size, "q.vmdk"), grain_runs(fd, extents), ZlibDeflater(), 2)
    finally:
        os.close(fd)
    sh("qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", source, tmp_path / "q.vmdk")
    theirs = (tmp_path / "q.vmdk").read_bytes()
    qemu_grains = {}
    position = HEADER.unpack_from(theirs)[10] * SECTOR
    while True:
        lba, length = struct.unpack_from("<QI", theirs, position)
        if not length:
            break
        qemu_grains[lba] = theirs[position : position + 12 + length]
        position += 12 + length + (-(12 + length) % SECTOR)
    _, grains = walk(ours.getvalue())
    data = ours.getvalue()
    our_grains = {}
    position = 128 * SECTOR
    for _ in grains:
        lba, length = struct.unpack_from("<QI", data, position)
        our_grains[lba] = data[position : position + 12 + length]
        position += 12 + length + (-(12 + length) % SECTOR)
    assert our_grains == qemu_grains and len(our_grains) == 48 + 1 + 32


def test_default_deflater_ratio_within_5_percent_of_qemu_img(tmp_path: Path) -> None:
    rng = random.Random(5)
    words = [bytes(rng.choice(b"abcdefghijklmnop") for _ in range(rng.randint(2, 9))) for _ in range(300)]
    text = b" ".join(rng.choice(words) for _ in range(700_000))[: 4 * MIB]
    binary = Path("/usr/bin/qemu-img").read_bytes()[: 4 * MIB]
    source = raw_disk(tmp_path / "src.raw", 16 * MIB, [(0, text), (4 * MIB, binary), (8 * MIB, rng.randbytes(MIB))])
    vmdk = write_vmdk(source, tmp_path / "ours.vmdk")
    sh("qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", source, tmp_path / "q.vmdk")
    ratio = vmdk.stat().st_size / (tmp_path / "q.vmdk").stat().st_size
    assert 0.95 <= ratio <= 1.05, (default_deflater().name, ratio)


@pytest.mark.skipif(LibdeflateDeflater.load() is None, reason="libdeflate0 is not installed")
def test_libdeflate_streams_inflate_with_zlib() -> None:
    deflater = LibdeflateDeflater.load()
    assert deflater is not None
    for data in (bytes(GRAIN), b"x" * 100, random.Random(6).randbytes(GRAIN), b"abc" * (GRAIN // 3)):
        assert zlib.decompress(deflater.compress(data)) == data
    with pytest.raises(VmdkWriteError, match="more than a grain"):
        deflater.compress(bytes(GRAIN + 1))


def test_output_is_the_same_for_any_thread_count(tmp_path: Path) -> None:
    size, pieces = SHAPES["random"]
    source = raw_disk(tmp_path / "src.raw", size, pieces + [(7 * MIB, b"text " * 100_000)])
    extents = [DataExtent(0, size, 0)]
    outputs = set()
    for workers in (1, 2, 5):
        out = io.BytesIO()
        fd = os.open(source, os.O_RDONLY)
        try:
            write_stream_vmdk(out, StreamVmdk(size, "d.vmdk"), grain_runs(fd, extents), workers=workers)
        finally:
            os.close(fd)
        outputs.add(out.getvalue())
    assert len(outputs) == 1


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"capacity": 1000}, "virtual size 1000 is not a positive multiple of 512 bytes"),
        ({"capacity": 0}, "virtual size 0 is not a positive multiple of 512 bytes"),
        ({"extent_name": "../x.vmdk"}, "extent name '../x.vmdk' is not a plain file name"),
        ({"extent_name": 'a".vmdk'}, "is not a plain file name"),
        ({"adapter": "virtio"}, "adapter 'virtio' is not one of ide, buslogic, lsilogic, legacyESX"),
        ({"cid": 1 << 32}, "content id 4294967296 does not fit 32 bits"),
    ],
)
def test_bad_disk_descriptions_are_refused(kwargs: dict[str, object], reason: str) -> None:
    args: dict[str, object] = {"capacity": MIB, "extent_name": "d.vmdk", **kwargs}
    with pytest.raises(VmdkWriteError) as caught:
        StreamVmdk(**args)  # type: ignore[arg-type]
    assert reason in str(caught.value)


@pytest.mark.parametrize(
    ("extents", "reason"),
    [
        ([DataExtent(0, 10, 0), DataExtent(5, 10, 100)], "unsorted, empty or overlapping"),
        ([DataExtent(0, 0, 0)], "unsorted, empty or overlapping"),
        ([DataExtent(MIB - 512, 1024, 0)], "beyond the disk or the file"),
        ([DataExtent(0, 512, 2 * MIB)], "beyond the disk or the file"),
    ],
)
def test_bad_maps_are_refused(extents: list[DataExtent], reason: str) -> None:
    with pytest.raises(VmdkWriteError, match=reason):
        check_extents(extents, MIB, 2 * MIB)


def test_runs_out_of_order_are_refused() -> None:
    runs = [(4, bytes(GRAIN)), (2, bytes(GRAIN))]
    with pytest.raises(VmdkWriteError, match="run at grain 2 .* out of order"):
        write_stream_vmdk(io.BytesIO(), StreamVmdk(MIB, "d.vmdk"), iter(runs), workers=1)
    with pytest.raises(VmdkWriteError, match="run at grain 15 .* out of order or size"):
        write_stream_vmdk(io.BytesIO(), StreamVmdk(MIB, "d.vmdk"), iter([(15, bytes(2 * GRAIN))]), workers=1)


def test_a_source_shorter_than_its_map_is_an_error(tmp_path: Path) -> None:
    source = raw_disk(tmp_path / "s.raw", MIB, [(0, b"x" * MIB)])
    fd = os.open(source, os.O_RDONLY)
    try:
        with pytest.raises(VmdkWriteError, match="source ends at byte 1048576, inside its data"):
            list(grain_runs(fd, [DataExtent(0, 2 * MIB, 0)]))
    finally:
        os.close(fd)


def test_a_package_of_a_compressed_qcow2_verifies(tmp_path: Path) -> None:
    size, pieces = SHAPES["partial-last-grain"]
    raw = raw_disk(tmp_path / "src.raw", size, pieces)
    source = tmp_path / "c.qcow2"
    sh("qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", raw, source)
    out = tmp_path / "out"
    package_appliance(settings_for(tmp_path / "o"), "debian-12", version="1", disk=source, out=out)
    report = verify_ova(out / "debian-12-1.ova")
    assert [d.capacity for d in report.disks] == [size]
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "scratch files left behind"


@st.composite
def layouts(draw: st.DrawFn) -> tuple[int, list[tuple[int, bytes]]]:
    sectors = draw(st.integers(1, 3 * GRAIN // SECTOR * 5))
    size = sectors * SECTOR
    pieces = []
    for _ in range(draw(st.integers(0, 6))):
        offset = draw(st.integers(0, size - 1))
        length = draw(st.integers(1, min(size - offset, 3 * GRAIN)))
        fill = draw(st.sampled_from([b"\0", b"\x01", b"ab", b"random"]))
        data = random.Random(offset).randbytes(length) if fill == b"random" else (fill * length)[:length]
        pieces.append((offset, data))
    return size, pieces


def union(pieces: list[tuple[int, bytes]]) -> list[DataExtent]:
    """The pieces' byte ranges, sorted and merged: what qemu-img map reports for such a raw file."""
    extents: list[DataExtent] = []
    for start, end in sorted((offset, offset + len(data)) for offset, data in pieces):
        if extents and start <= extents[-1].start + extents[-1].length:
            last = extents[-1]
            extents[-1] = DataExtent(last.start, max(end, last.start + last.length) - last.start, last.start)
        else:
            extents.append(DataExtent(start, end - start, start))
    return extents


@given(layouts(), st.integers(1, 3), st.booleans())
def test_any_layout_reads_back_as_written(
    layout: tuple[int, list[tuple[int, bytes]]], workers: int, whole: bool
) -> None:
    """Random sizes (any number of sectors) and data placements, the whole disk as one extent or as
    the pieces' own extents: a stream reader gets the disk back, all-zero grains never stored."""
    size, pieces = layout
    disk = bytearray(size)
    for offset, data in pieces:
        disk[offset : offset + len(data)] = data
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"vmdk-fuzz-{os.getpid()}.raw"
    path.write_bytes(disk)
    try:
        with bounded(seconds=5, memory_bytes=64 * MIB):
            out = io.BytesIO()
            fd = os.open(path, os.O_RDONLY)
            try:
                extents = [DataExtent(0, size, 0)] if whole else union(pieces)
                check_extents(extents, size, size)
                write_stream_vmdk(out, StreamVmdk(size, "f.vmdk"), grain_runs(fd, extents), workers=workers)
            finally:
                os.close(fd)
            _, grains = walk(out.getvalue())
        assert content(grains, size) == bytes(disk)
        assert all(raw.strip(b"\0") for raw in grains.values())
    finally:
        path.unlink()


def test_map_windows_join_into_one_extent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = raw_disk(tmp_path / "s.raw", 4 * MIB, [(0, b"x" * 4 * MIB)])
    monkeypatch.setattr(formats, "MAP_WINDOW", MIB)
    assert formats.data_extents(source, DiskFormat.RAW, 4 * MIB) == [DataExtent(0, 4 * MIB, 0)]
    info = json.loads(sh("qemu-img", "map", "-f", "raw", "--output=json", source))
    assert [e["data"] for e in info] == [True]
