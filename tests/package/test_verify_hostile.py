"""`verify-ova` against inputs built to hang it, fool it or burn its time (issue 14 §5): each real file is
refused quickly with its one exact reason, and the defences do not refuse a sound OVA."""

from __future__ import annotations

import io
import struct
import tarfile
from pathlib import Path

import pytest

from pipeline.errors import VerificationError
from pipeline.formats.ova import parse_tar_header
from pipeline.package.verify import read_members, verify_ova
from tests.fuzzing import bounded

from .helpers import ova_members
from .test_verify import DISK, OVF, Parts, assemble, edit_ovf

BLOCK = 512


@pytest.fixture(scope="module")
def parts(ova_path: Path) -> Parts:
    members = ova_members(ova_path)
    return Parts(members[OVF], members[DISK])


def problems_of(path: Path, **kw: object) -> list[str]:
    with pytest.raises(VerificationError) as caught:
        verify_ova(path, qemu_check=False, **kw)  # type: ignore[arg-type]
    return caught.value.problems


def header(name: str = "x.ovf", size: int = 0) -> bytearray:
    info = tarfile.TarInfo(name)
    info.size = size
    return bytearray(info.tobuf(tarfile.USTAR_FORMAT, "ascii", "strict"))


def with_field(block: bytearray, offset: int, value: bytes) -> bytes:
    """``block`` with one field replaced and the checksum recomputed, as a careful forger would."""
    block[offset : offset + len(value)] = value
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def tar_file(tmp: Path, *blocks: bytes, tail: int = 2) -> Path:
    path = tmp / "x.ova"
    path.write_bytes(b"".join(blocks) + b"\0" * BLOCK * tail)
    return path


def test_a_negative_base256_size_is_refused_not_looped_on(tmp_path: Path) -> None:
    """The 276 KB file that looped forever with memory growing: size -1 in GNU base-256."""
    evil = with_field(header(), 124, b"\xff" * 12)
    path = tar_file(tmp_path, evil, b"A" * (276 * 1024 - BLOCK))
    with bounded(seconds=5, memory_bytes=16 * 2**20):
        problems = problems_of(path)
    assert problems == ["tar: invalid header at byte 0: size field is negative (-1, base-256)"]


def test_a_negative_size_on_a_later_member_is_refused(tmp_path: Path) -> None:
    first = with_field(header("x.ovf", 3), 0, b"x.ovf")
    evil = with_field(header("y"), 124, b"\xff" + b"\xff" * 10 + b"\x00")  # -256: one block back
    path = tar_file(tmp_path, first, b"abc".ljust(BLOCK, b"\0"), evil)
    assert problems_of(path) == ["tar: invalid header at byte 1024: size field is negative (-256, base-256)"]


@pytest.mark.parametrize(
    ("offset", "value", "reason"),
    [
        (124, b"12345678901x", "size field b'12345678901x' is not octal"),
        (124, b"-0000000001\0", "size field b'-0000000001\\x00' is not octal"),
        (136, b"\xff" * 12, "mtime field is negative (-1, base-256)"),
        (100, b"\xff" * 8, "mode field is negative (-1, base-256)"),
        (108, b"0000009\0", "uid field b'0000009\\x00' is not octal"),
        (329, b"\x80\x00\x00\x00\x00\x00\x00\x00\x00"[:8], "devmajor field is negative"),
        (0, b"caf\xc3\xa9.ovf\0", "a name is not ASCII (byte 3)"),
    ],
    ids=["size-letter", "size-minus", "mtime-negative", "mode-negative", "uid-9", "devmajor-base256", "non-ascii"],
)  # fmt: skip
def test_hostile_numeric_fields_are_refused(tmp_path: Path, offset: int, value: bytes, reason: str) -> None:
    block = with_field(header(), offset, value)
    if offset == 329:  # base-256 and positive is a number like any other, not an error
        assert parse_tar_header(block).name == "x.ovf"
        return
    assert problems_of(tar_file(tmp_path, block)) == [f"tar: invalid header at byte 0: {reason}"]


def test_a_bad_checksum_is_refused(tmp_path: Path) -> None:
    block = header()
    stored = int(bytes(block[148:154]), 8)
    block[0:5] = b"y.ovf"  # edited after the checksum was computed
    computed = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    assert problems_of(tar_file(tmp_path, bytes(block))) == [
        f"tar: invalid header at byte 0: bad checksum (stored {stored}, computed {computed})"
    ]


def test_a_size_beyond_the_file_is_refused(tmp_path: Path) -> None:
    huge = with_field(header(), 124, b"\x80" + (2**80).to_bytes(11, "big"))  # base-256, positive, enormous
    path = tar_file(tmp_path, huge)
    assert problems_of(path) == [
        f"tar: 'x.ovf': truncated (its {2**80} bytes run past the archive's end at byte {3 * BLOCK})"
    ]


def test_too_many_entries_are_refused_with_the_flag_named(tmp_path: Path) -> None:
    blocks = [with_field(header(f"f{i}.ovf"), 0, f"f{i}.ovf".encode()) for i in range(150)]
    path = tar_file(tmp_path, *blocks)
    problems = problems_of(path)
    assert "tar: more than 100 entries (raise --max-members if this OVA is genuine)" in problems
    assert "tar: more than 200 entries (raise --max-members if this OVA is genuine)" not in problems_of(
        path, max_members=200
    )


def test_a_ustar_prefix_cannot_smuggle_a_path(tmp_path: Path) -> None:
    block = with_field(header("passwd"), 345, b"etc\0")
    assert problems_of(tar_file(tmp_path, block))[0] == (
        "tar: 'etc/passwd': unsafe member name (absolute, '..', a folder or odd characters)"
    )


def test_headers_are_read_only_within_the_member_bound() -> None:
    """read_members on a stream of empty-file headers stops at the entry bound, each header read once."""
    stream = io.BytesIO(with_field(header("a"), 0, b"a") * 10_000)
    problems: list[str] = []
    with bounded(seconds=5, memory_bytes=16 * 2**20):
        read_members(stream, problems, max_members=100)
    assert problems[-1] == "tar: more than 100 entries (raise --max-members if this OVA is genuine)"
    assert stream.tell() <= 102 * BLOCK


# --- the descriptor: capacity units, digits, caps, many disks on one file ---


def capacity_edit(p: Parts, capacity: str, units: str = "byte") -> bytes:
    return edit_ovf(p, 'ovf:capacity="67108864" ovf:capacityAllocationUnits="byte"',
                    f'ovf:capacity="{capacity}" ovf:capacityAllocationUnits="{units}"')  # fmt: skip


@pytest.mark.parametrize(
    ("capacity", "units", "reason"),
    [
        ("1", "byte * 2^10000000000",
         "Disk vmdisk1: capacityAllocationUnits 'byte * 2^10000000000' is not 'byte' or 'byte * 2^N'"),
        ("1", "byte * 2^99", "Disk vmdisk1: capacityAllocationUnits 'byte * 2^99': exponent above 60"),
        ("1", "byte * 10^19", "Disk vmdisk1: capacityAllocationUnits 'byte * 10^19': exponent above 18"),
        ("1", "byte * 2^²", "Disk vmdisk1: capacityAllocationUnits 'byte * 2^²' is not 'byte' or 'byte * 2^N'"),
        ("6²", "byte", "Disk vmdisk1: capacity '6²' is not a number"),
        ("٣", "byte", "Disk vmdisk1: capacity '٣' is not a number"),
        ("9" * 5000, "byte", f"Disk vmdisk1: capacity {'9' * 40!r} is not a number"),
        ("17", "byte * 2^40", "Disk vmdisk1: capacity 18691697672192 bytes is more than the 16384 GiB allowed "
                              "(raise it with --max-capacity-gib)"),
    ],
    ids=["exponent-bomb", "exponent-2", "exponent-10", "superscript-exponent", "superscript", "arabic-indic",
         "5000-digits", "over-the-cap"],
)  # fmt: skip
def test_hostile_capacities_are_refused(parts: Parts, tmp_path: Path, capacity: str, units: str, reason: str) -> None:
    path = assemble(tmp_path, capacity_edit(parts, capacity, units), parts.disk)
    with bounded(seconds=10, memory_bytes=64 * 2**20):
        problems = problems_of(path)
    assert f"{OVF}: {reason}" in problems, problems


def test_capacity_in_units_and_a_raised_cap_are_accepted(parts: Parts, tmp_path: Path) -> None:
    assert verify_ova(assemble(tmp_path, capacity_edit(parts, "64", "byte * 2^20"), parts.disk), qemu_check=False)
    path = assemble(tmp_path, parts.ovf, parts.disk)
    assert problems_of(path, max_capacity_gib=0) == [
        f"{OVF}: Disk vmdisk1: capacity 67108864 bytes is more than the 0 GiB allowed "
        "(raise it with --max-capacity-gib)"
    ]


def test_superscript_digits_in_sizes_and_types_do_not_crash(parts: Parts, tmp_path: Path) -> None:
    ovf = edit_ovf(parts, f'ovf:size="{len(parts.disk)}"', 'ovf:size="1²"')
    ovf = ovf.replace(
        b"<rasd:ResourceType>17</rasd:ResourceType>", "<rasd:ResourceType>1⁷</rasd:ResourceType>".encode()
    )
    problems = problems_of(assemble(tmp_path, ovf, parts.disk))
    assert f"{OVF}: File file1: ovf:size '1²' is not a number of bytes" in problems, problems


def many_disks(p: Parts, count: int) -> bytes:
    disk = '<Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="67108864"'
    line = next(ln for ln in p.ovf.decode().splitlines() if disk in ln).strip()
    extra = "\n".join(line.replace('"vmdisk1"', f'"extra{i}"') for i in range(count))
    return edit_ovf(p, line, f"{line}\n{extra}")


def test_many_disks_on_one_file_check_it_once(parts: Parts, tmp_path: Path) -> None:
    """500 Disk entries naming one file: one header inspection, one grain walk, one qemu-img check."""
    bad = bytearray(parts.disk)
    bad[4:8] = struct.pack("<I", 1)  # header version 1: a problem of the file, reported once
    path = assemble(tmp_path, many_disks(parts, 500), bytes(bad))
    problems = problems_of(path)
    assert problems.count(f"{DISK}: streamOptimized vmdk has header version 1, consumers need 3") == 1
    report = verify_ova(assemble(tmp_path, many_disks(parts, 500), parts.disk), qemu_check=True)
    assert len(report.disks) == 501


def test_garbage_grains_inside_an_ova_are_refused(parts: Parts, tmp_path: Path) -> None:
    """Headers, tables and manifest all fine; the grain data is junk. qemu-img check would call it sound."""
    disk = bytearray(parts.disk)
    overhead = struct.unpack_from("<Q", disk, 64)[0] * 512
    while struct.unpack_from("<I", disk, overhead + 8)[0] == 0:  # find the first grain marker
        overhead += 512
    lba, size = struct.unpack_from("<QI", disk, overhead)
    disk[overhead + 12 : overhead + 12 + size] = b"\xff" * size
    problems = problems_of(assemble(tmp_path, parts.ovf, bytes(disk)))
    assert problems == [
        f"{DISK}: vmdk: grain at byte {overhead} (LBA {lba}): does not inflate "
        "(Error -3 while decompressing data: incorrect header check)"
    ]


def test_problems_are_capped(parts: Parts, tmp_path: Path) -> None:
    """Thousands of bad Disk entries give a bounded report (and each reason stays one line)."""
    ovf = many_disks(parts, 400).replace(b'ovf:capacity="67108864"', b'ovf:capacity="x"')
    problems = problems_of(assemble(tmp_path, ovf, parts.disk))
    assert len(problems) == 101 and problems[-1].startswith("... and ") and problems[-1].endswith(" more problems")
    assert all("\n" not in p for p in problems)
