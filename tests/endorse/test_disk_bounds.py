"""The offline audit reads disks from strangers: a small image must not make it write terabytes
(debugfs writes a sparse file's holes out as zeros) or convert a disk of absurd virtual size."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipeline.audit.disk import MAX_VIRTUAL_BYTES, open_root
from pipeline.errors import ArtifactError
from tests.endorse.disks import make_disk


def test_a_sparse_file_larger_than_the_cap_stops_the_copy(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("x\n")
    with open(root / "big.img", "wb") as f:
        f.truncate(20 * 1024**3)  # 20 GiB of holes in a 40 MiB image
    disk = make_disk(root, tmp_path / "disk.qcow2")
    with pytest.raises(ArtifactError) as failed, open_root(disk, "qcow2", tmp_path / "scratch", max_file_bytes=8 << 20):
        pass
    assert str(failed.value.message).endswith(
        f"{disk}: a file in the root filesystem is larger than {8 << 20} bytes "
        "(the audit's per-file cap; sparse files count at their full size)"
    )
    assert not any((tmp_path / "scratch").iterdir()), "the partial copy must be removed"


def test_files_under_the_cap_are_copied(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("x\n")
    (root / "data").write_bytes(b"y" * (1 << 20))
    disk = make_disk(root, tmp_path / "disk.qcow2")
    with open_root(disk, "qcow2", tmp_path / "scratch", max_file_bytes=8 << 20) as (fs, info):
        assert fs.read_text("/etc/hostname") == "x\n"
        assert fs.read_bytes("/data") == b"y" * (1 << 20)
        assert info.partition.table == "mbr"


def test_an_absurd_virtual_size_is_refused_before_any_conversion(tmp_path: Path) -> None:
    disk = tmp_path / "huge.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), str(MAX_VIRTUAL_BYTES + 512)], check=True)
    with (
        pytest.raises(ArtifactError, match=r"virtual size \d+ bytes is over the audit's cap"),
        open_root(disk, "qcow2", tmp_path / "scratch"),
    ):
        pass
