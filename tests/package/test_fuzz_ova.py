"""Property-based fuzzing of every reader `verify-ova` runs on outside input: the tar reader, the VMDK
header and grain reader, the OVF descriptor facts and the manifest parser. Whatever the bytes, each
reports only its own problems (one line each), never raises anything else, and stays inside a time and
memory bound per case (tests/fuzzing.py; profile "ci": fixed seed, 200 cases)."""

from __future__ import annotations

import io
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.appliance import Appliance
from pipeline.formats.ova import TarHeaderError, parse_manifest, parse_tar_header, tar_header
from pipeline.formats.ovf import DiskRef, UnsafeXml, build_descriptor, parse_descriptor
from pipeline.formats.vmdk_read import check_extent
from pipeline.package.images import DiskFormat, inspect_disk
from pipeline.package.verify import descriptor_facts, read_members
from tests.fuzzing import bounded

from .vmdk_stream import GRAIN, SECTOR, Stream

MIB = 2**20
# (offset, new byte) edits, applied in order: small, targeted damage to a valid input.
edits = st.lists(st.tuples(st.integers(min_value=0, max_value=2**16), st.integers(0, 255)), max_size=12)


def mutate(data: bytes, changes: list[tuple[int, int]], cut: int | None = None) -> bytes:
    out = bytearray(data)
    for offset, value in changes:
        if out:
            out[offset % len(out)] = value
    return bytes(out[:cut] if cut is not None else out)


def one_line_each(problems: list[str]) -> None:
    assert all(isinstance(p, str) and p and "\n" not in p for p in problems), problems


# --- tar ---


def small_ova() -> bytes:
    parts = [tar_header("x.ovf", 5, 0), b"<a/>\n".ljust(512, b"\0"), tar_header("x.mf", 0, 0)]
    return b"".join(parts) + b"\0" * 1024


@given(st.binary(max_size=4096))
def test_tar_reader_on_any_bytes(data: bytes) -> None:
    problems: list[str] = []
    with bounded(seconds=2, memory_bytes=16 * MIB):
        members = read_members(io.BytesIO(data), problems)
    one_line_each(problems)
    assert all(m.offset + m.size <= len(data) for m in members)


@given(edits, st.one_of(st.none(), st.integers(0, 3000)))
def test_tar_reader_on_damaged_archives(changes: list[tuple[int, int]], cut: int | None) -> None:
    data = mutate(small_ova(), changes, cut)
    problems: list[str] = []
    with bounded(seconds=2, memory_bytes=16 * MIB):
        members = read_members(io.BytesIO(data), problems)
    one_line_each(problems)
    assert all(m.size >= 0 and m.offset + m.size <= len(data) for m in members)


@given(st.binary(min_size=512, max_size=512), st.sampled_from([124, 136, 100, 108, 116, 148, 329, 337]),
       st.binary(min_size=1, max_size=12))  # fmt: skip
def test_tar_header_fields(block: bytes, offset: int, field: bytes) -> None:
    block = block[:offset] + field + block[offset + len(field) :]
    try:
        header = parse_tar_header(block[:512])
    except TarHeaderError as e:
        one_line_each([str(e)])
        return
    assert header.size >= 0


# --- VMDK: header and grains ---


def small_stream() -> bytes:
    return Stream(GRAIN * 4, {0: b"a" * GRAIN * SECTOR, GRAIN * 2: bytes(range(256)) * (GRAIN * 2)}).build()


@given(edits, st.one_of(st.none(), st.integers(0, 8000)))
def test_vmdk_reader_on_damaged_streams(changes: list[tuple[int, int]], cut: int | None) -> None:
    data = mutate(small_stream(), changes, cut)
    with bounded(seconds=2, memory_bytes=32 * MIB):
        report = check_extent(io.BytesIO(data), 0, len(data), max_capacity=2**40)
        inspection = inspect_disk(io.BytesIO(data), DiskFormat.VMDK, len(data))
    one_line_each(report.problems)
    one_line_each(list(inspection.problems))
    assert report.inflated_bytes <= report.grains * GRAIN * SECTOR


@given(st.lists(st.tuples(st.integers(0, 2**40), st.binary(max_size=300)), max_size=8))
def test_vmdk_reader_on_forged_grains(grains: list[tuple[int, bytes]]) -> None:
    """Grains with any LBA and any payload (some valid zlib, some not), tables made to match."""
    payloads = {lba: (zlib.compress(p) if lba % 2 else p) for lba, p in grains}
    data = Stream(GRAIN * 8, raw_payloads=payloads).build()
    with bounded(seconds=2, memory_bytes=32 * MIB):
        report = check_extent(io.BytesIO(data), 0, len(data), max_capacity=2**40)
    one_line_each(report.problems)


@given(st.binary(max_size=2048))
def test_vmdk_reader_on_any_bytes(data: bytes) -> None:
    data = b"KDMV" + data
    with bounded(seconds=2, memory_bytes=16 * MIB):
        report = check_extent(io.BytesIO(data), 0, len(data), max_capacity=2**40)
        inspection = inspect_disk(io.BytesIO(data), DiskFormat.VMDK, len(data))
    one_line_each(report.problems)
    one_line_each(list(inspection.problems))


# --- the OVF descriptor ---

FIELDS = [  # (what the generated descriptor says, the same spot with a hostile value)
    ('ovf:capacity="67108864"', 'ovf:capacity="{}"'),
    ('ovf:capacityAllocationUnits="byte"', 'ovf:capacityAllocationUnits="{}"'),
    ('ovf:size="1000"', 'ovf:size="{}"'),
    (">17</rasd:ResourceType>", ">{}</rasd:ResourceType>"),
    (">ovf:/disk/vmdisk1<", ">{}<"),
    (">3</rasd:Parent>", ">{}</rasd:Parent>"),
    (">byte * 2^20<", ">{}<"),
    ('ovf:fileRef="file1"', 'ovf:fileRef="{}"'),
]
xml_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters='"<>&\x00'), max_size=40).filter(
    lambda t: all(ord(c) >= 0x20 or c in "\t\n\r" for c in t)
)


@pytest.fixture(scope="module")
def descriptor(appliance: Appliance) -> str:
    return build_descriptor(appliance, "2026.11.22", DiskRef("d.vmdk", 1000, 67108864)).decode()


@given(st.lists(st.tuples(st.sampled_from(FIELDS), xml_text), max_size=4))
def test_descriptor_facts_on_hostile_values(descriptor: str, changes: list[tuple[tuple[str, str], str]]) -> None:
    text = descriptor
    for (old, template), value in changes:
        text = text.replace(old, template.format(value), 1)
    with bounded(seconds=5, memory_bytes=64 * MIB):
        try:
            facts = descriptor_facts(parse_descriptor(text.encode()))
        except UnsafeXml as e:
            one_line_each([str(e).replace("\n", " ")])
            return
    one_line_each(facts.problems)
    assert all(d.capacity is None or 0 <= d.capacity <= 2**64 * 2**60 for d in facts.disks)


@given(st.binary(max_size=2048))
def test_descriptor_on_any_bytes(data: bytes) -> None:
    with bounded(seconds=5, memory_bytes=64 * MIB):
        try:
            facts = descriptor_facts(parse_descriptor(data))
        except UnsafeXml:
            return
    one_line_each(facts.problems)


# --- the manifest ---

manifest_line = st.one_of(
    st.builds(lambda a, n, h: f"{a}({n})= {h}", st.sampled_from(["SHA256", "SHA512", "SHA1", "MD5", "sha256"]),
              st.text(max_size=20), st.text("0123456789abcdefABCDEF", max_size=130)),
    st.text(max_size=80),
)  # fmt: skip


@given(st.lists(manifest_line, max_size=20), st.sampled_from(["\n", "\r\n", "\r"]))
def test_manifest_parser(lines: list[str], newline: str) -> None:
    data = newline.join(lines).encode("utf-8", "surrogatepass")
    with bounded(seconds=2, memory_bytes=16 * MIB):
        entries, problems = parse_manifest(data)
    one_line_each(problems)
    for algo, digest in entries.values():
        assert len(digest) == {"SHA256": 64, "SHA512": 128}[algo]


@given(st.binary(max_size=4096))
def test_manifest_parser_on_any_bytes(data: bytes) -> None:
    with bounded(seconds=2, memory_bytes=16 * MIB):
        _, problems = parse_manifest(data)
    one_line_each(problems)
