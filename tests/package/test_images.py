"""Disk headers are inspected in Python before qemu-img sees them: each hostile image, made with the
real qemu-img, is refused for its own reason (security-and-reliability.md §2.1)."""

from __future__ import annotations

import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.errors import ArtifactError, ConfigError
from pipeline.package import package_appliance
from pipeline.package.images import DiskFormat, DiskInspection, inspect_disk, parse_vmdk_header

from .helpers import make_disk, settings_for, sh


def inspect(path: Path, fmt: DiskFormat) -> DiskInspection:
    with open(path, "rb") as f:
        return inspect_disk(f, fmt, path.stat().st_size)


def stream_vmdk(tmp: Path) -> Path:
    src = make_disk(tmp / "src.raw", 16, "raw")
    out = tmp / "disk.vmdk"
    sh("qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", src, out)
    return out


def rewrite_descriptor(path: Path, edit: Callable[[str], str]) -> Path:
    data = bytearray(path.read_bytes())
    header = parse_vmdk_header(bytes(data[:512]))
    assert header is not None
    start, length = header.descriptor_offset * 512, header.descriptor_sectors * 512
    text = bytes(data[start : start + length]).split(b"\0", 1)[0].decode()
    new = edit(text).encode()
    assert len(new) < length
    data[start : start + length] = new + b"\0" * (length - len(new))
    path.write_bytes(bytes(data))
    return path


def patch(path: Path, offset: int, value: bytes) -> Path:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(value)
    return path


def qcow2_with_backing(tmp: Path) -> Path:
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/hosts", "-F", "raw", tmp / "d.qcow2")
    return tmp / "d.qcow2"


def qcow2_with_data_file(tmp: Path) -> Path:
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={tmp / 'data.raw'}", tmp / "d.qcow2", "16M")
    return tmp / "d.qcow2"


def qcow2_unknown_feature(tmp: Path) -> Path:
    path = make_disk(tmp / "d.qcow2", 16)
    return patch(path, 79, bytes([(path.read_bytes()[79]) | 0x20]))


def qcow2_v1(tmp: Path) -> Path:
    return patch(make_disk(tmp / "d.qcow2", 16), 4, struct.pack(">I", 1))


def raw_with_qcow2_header(tmp: Path) -> Path:
    qcow = make_disk(tmp / "inner.qcow2", 16)
    raw = tmp / "d.raw"
    raw.write_bytes(qcow.read_bytes().ljust(1024 * 1024, b"\0"))
    return raw


def raw_that_is_an_iso(tmp: Path) -> Path:
    (tmp / "iso").mkdir()
    (tmp / "iso" / "f.txt").write_text("x")
    sh("genisoimage", "-quiet", "-o", tmp / "d.raw", tmp / "iso")
    return tmp / "d.raw"


def raw_with_vmdk_header(tmp: Path) -> Path:
    vmdk = stream_vmdk(tmp)
    raw = tmp / "d.raw"
    raw.write_bytes(vmdk.read_bytes().ljust(1024 * 1024, b"\0"))
    return raw


def flat_vmdk_descriptor(tmp: Path) -> Path:
    sh("qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", tmp / "d.vmdk", "16M")
    return tmp / "d.vmdk"


def vmdk_flat_extent_to_host_file(tmp: Path) -> Path:
    return rewrite_descriptor(
        stream_vmdk(tmp),
        lambda t: "\n".join(
            'RW 32768 FLAT "/etc/hosts" 0' if line.startswith("RW ") else line for line in t.splitlines()
        ),
    )


def vmdk_with_parent(tmp: Path) -> Path:
    return rewrite_descriptor(
        stream_vmdk(tmp), lambda t: t.replace("parentCID=ffffffff", 'parentCID=12345678\nparentFileNameHint="/x"')
    )


def vmdk_two_extents(tmp: Path) -> Path:
    return rewrite_descriptor(
        stream_vmdk(tmp), lambda t: t.replace('SPARSE "disk.vmdk"', 'SPARSE "disk.vmdk"\nRW 16 SPARSE "other.vmdk"')
    )


def vmdk_version_1(tmp: Path) -> Path:
    return patch(stream_vmdk(tmp), 4, struct.pack("<I", 1))


def vmdk_huge_descriptor(tmp: Path) -> Path:
    return patch(stream_vmdk(tmp), 36, struct.pack("<Q", 1 << 40))


def raw_declared_qcow2(tmp: Path) -> Path:
    return make_disk(tmp / "d.qcow2", 16, "raw")


HOSTILE = [
    (qcow2_with_backing, DiskFormat.QCOW2, "backing file"),
    (qcow2_with_data_file, DiskFormat.QCOW2, "external data file"),
    (qcow2_unknown_feature, DiskFormat.QCOW2, "unknown incompatible feature"),
    (qcow2_v1, DiskFormat.QCOW2, "version 1 is not supported"),
    (raw_declared_qcow2, DiskFormat.QCOW2, "declared qcow2 but has no known header"),
    (raw_with_qcow2_header, DiskFormat.RAW, "carries a qcow2 header"),
    (raw_with_vmdk_header, DiskFormat.RAW, "carries a vmdk (sparse) header"),
    (raw_that_is_an_iso, DiskFormat.RAW, "carries a iso9660 header"),
    (flat_vmdk_descriptor, DiskFormat.VMDK, "declared vmdk but has vmdk (descriptor)"),
    (vmdk_flat_extent_to_host_file, DiskFormat.VMDK, "names a path '/etc/hosts'"),
    (vmdk_with_parent, DiskFormat.VMDK, "unexpected 'parentCID=12345678'"),
    (vmdk_two_extents, DiskFormat.VMDK, "2 extents"),
    (vmdk_version_1, DiskFormat.VMDK, "header version 1, consumers need 3"),
    (vmdk_huge_descriptor, DiskFormat.VMDK, "too big"),
]


@pytest.mark.parametrize(("make", "declared", "reason"), HOSTILE, ids=[h[0].__name__ for h in HOSTILE])
def test_hostile_disk_is_refused_for_its_reason(
    tmp_path: Path, make: Callable[[Path], Path], declared: DiskFormat, reason: str
) -> None:
    result = inspect(make(tmp_path), declared)
    assert not result.safe
    assert any(reason in p for p in result.problems), result.problems


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_plain_images_pass(tmp_path: Path, fmt: str) -> None:
    result = inspect(make_disk(tmp_path / f"d.{fmt}", 16, fmt), DiskFormat(fmt))
    assert result.problems == ()
    assert result.virtual_size == 16 * 1024 * 1024


@pytest.mark.parametrize("subformat", ["streamOptimized", "monolithicSparse"])
def test_sparse_vmdks_pass(tmp_path: Path, subformat: str) -> None:
    src = make_disk(tmp_path / "src.raw", 16, "raw")
    out = tmp_path / "d.vmdk"
    sh("qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", f"subformat={subformat}", src, out)
    result = inspect(out, DiskFormat.VMDK)
    assert result.problems == ()
    assert (result.subformat, result.virtual_size) == (subformat, 16 * 1024 * 1024)


def test_our_stream_vmdk_passes(tmp_path: Path) -> None:
    """What our own writer makes (GD at the end, footer) gets the same header check as qemu-img's."""
    from pipeline.formats.vmdk_write import StreamVmdk
    from pipeline.package import formats

    src = make_disk(tmp_path / "src.raw", 16, "raw")
    out = tmp_path / "d.vmdk"
    formats.write_stream_vmdk(src, DiskFormat.RAW, out, StreamVmdk(16 * 1024 * 1024, out.name, "lsilogic"), tmp_path)
    result = inspect(out, DiskFormat.VMDK)
    assert result.problems == ()
    assert (result.subformat, result.version, result.virtual_size) == ("streamOptimized", 3, 16 * 1024 * 1024)


@pytest.mark.parametrize("make", [qcow2_with_backing, qcow2_with_data_file], ids=["backing-file", "data-file"])
def test_package_refuses_unsafe_disk_and_writes_nothing(tmp_path: Path, make: Callable[[Path], Path]) -> None:
    disk = make(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(ArtifactError, match="refusing to package"):
        package_appliance(settings_for(tmp_path / "output"), "debian-12", version="1", disk=disk, out=out)
    assert not out.exists() or list(out.iterdir()) == []


def test_package_never_guesses_the_format(tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "d.qcow2", 16)
    renamed = tmp_path / "d.vhd"
    shutil.copy(disk, renamed)
    with pytest.raises(ConfigError, match=r"\.qcow2, \.raw or \.img"):
        package_appliance(settings_for(tmp_path / "o"), "debian-12", version="1", disk=renamed, out=tmp_path / "out")


@pytest.mark.parametrize("cid", ["d7c4b3a", "fffffffe", "1"])
def test_vmdk_descriptor_accepts_unpadded_cids(cid: str) -> None:
    # qemu-img prints a random CID with %x: about one disk in sixteen has fewer than 8 digits
    from pipeline.package.images import _VMDK_LINE

    assert _VMDK_LINE.match(f"CID={cid}")
    assert not _VMDK_LINE.match("CID=123456789")
