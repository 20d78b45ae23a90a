"""A build's scratch folder is unmounted before it is deleted: a chroot tool stopped by a signal
(mmdebstrap in root mode, SIGTERMed mid-extract) can leave its /proc, /sys, /dev/pts and /dev/shm
mounted there. Real mounts (tmpfs, proc), as root."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import types
from pathlib import Path

import pytest

import pipeline.builder as builder
from pipeline.builder.disk import mount_points_under, unmount_under
from pipeline.settings import Settings

from .child import start_child

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")


def mount(kind: str, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", kind, kind, str(target)], check=True)


def test_nested_mounts_and_names_with_spaces_are_found_and_unmounted_last_first(tmp_path: Path) -> None:
    root = tmp_path / "chroot with space"
    mount("tmpfs", root / "dev")
    mount("tmpfs", root / "dev" / "shm")  # nested: must go before its parent
    mount("proc", root / "proc")
    beside = tmp_path / "chroot-other"  # a sibling whose name starts the same is not "under" root
    mount("tmpfs", beside)
    try:
        assert mount_points_under(root) == [root / "dev", root / "dev" / "shm", root / "proc"]
        assert unmount_under(root) == []
        assert mount_points_under(root) == []
        assert mount_points_under(beside) == [beside]
    finally:
        unmount_under(tmp_path)
    assert mount_points_under(tmp_path) == []


def test_a_busy_mount_is_detached_lazily(tmp_path: Path) -> None:
    mount("tmpfs", tmp_path / "busy")
    with open(tmp_path / "busy" / "held", "w"):  # an open file keeps a plain umount busy
        assert unmount_under(tmp_path) == []
    assert mount_points_under(tmp_path) == []


def test_the_build_scratch_folder_goes_even_with_a_stopped_chroot_mounted_in_it(
    reference_settings: Settings, tmp_path: Path
) -> None:
    settings = dataclasses.replace(reference_settings, work_dir=tmp_path / "work")
    with builder._scratch(settings, "x") as work:
        mount("proc", work / "base" / "tmp" / "mmdebstrap.x" / "proc")
        mount("tmpfs", work / "base" / "tmp" / "mmdebstrap.x" / "dev" / "shm")
        (work / "seed").write_text("build key")
    assert mount_points_under(tmp_path) == []
    assert not work.exists()


def test_what_cannot_be_unmounted_is_left_in_place_not_deleted_through(
    reference_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings = dataclasses.replace(reference_settings, work_dir=tmp_path / "work")
    monkeypatch.setattr(builder, "unmount_under", lambda path: mount_points_under(path))  # umount fails
    with builder._scratch(settings, "x") as work:
        mount("tmpfs", work / "host-bind")
        (work / "host-bind" / "precious").write_text("a host file seen through a bind mount")
    try:
        assert (work / "host-bind" / "precious").is_file()
        assert "still mounted" in caplog.text and str(work) in caplog.text
    finally:
        unmount_under(tmp_path)


# A build as a separate process: its scratch folder with a chroot-like mount inside, then it waits.
_BUILD = """
import sys, time, types
from pathlib import Path
from pipeline.builder import _scratch
import subprocess
with _scratch(types.SimpleNamespace(work_dir=Path(sys.argv[1])), "x") as work:
    (work / "chroot" / "proc").mkdir(parents=True)
    subprocess.run(["mount", "-t", "proc", "proc", str(work / "chroot" / "proc")], check=True)
    print(work, flush=True)
    time.sleep(600)
"""


def start_build(work_dir: Path) -> tuple[subprocess.Popen[str], Path]:
    return start_child(_BUILD, str(work_dir))


def test_a_killed_builds_scratch_folder_and_mounts_go_at_the_next_build_a_live_ones_stay(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    work_dir = tmp_path / "work"
    killed, killed_work = start_build(work_dir)
    live, live_work = start_build(work_dir)
    try:
        killed.send_signal(signal.SIGKILL)  # no cleanup runs: the folder and its mount stay
        killed.wait(timeout=30)
        assert mount_points_under(killed_work) == [killed_work / "chroot" / "proc"]
        before_lock = work_dir / "build-old-format"  # no lock file: not ours to judge, left alone
        before_lock.mkdir()
        settings = types.SimpleNamespace(work_dir=work_dir)
        with builder._scratch(settings, "next") as work:  # type: ignore[arg-type]
            assert work.is_dir()
        assert not killed_work.exists() and mount_points_under(killed_work) == []
        assert f"removing {killed_work}: left by a build that was killed" in caplog.text
        assert live_work.is_dir() and mount_points_under(live_work) == [live_work / "chroot" / "proc"]
        assert before_lock.is_dir()
    finally:
        live.terminate()  # SIGTERM: Python exits without running the finally blocks...
        live.wait(timeout=30)
        unmount_under(tmp_path)  # ...so this test cleans the live one's mount itself
    assert mount_points_under(tmp_path) == []
