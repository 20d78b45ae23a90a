"""A build stages its version in a hidden ``.<version>.partial-*`` folder beside the final one. A build
that is killed (SIGKILL, the OOM killer: no clean-up runs) leaves that folder behind; the next build
in the same output folder removes it, and never a live build's. Real processes."""

from __future__ import annotations

import logging
import signal
import subprocess
from pathlib import Path

import pytest

import pipeline.builder as builder

from .child import start_child

# A build as a separate process: it stages a version, writes into it, then waits.
_BUILD = """
import sys, time
from pathlib import Path
from pipeline.builder import _staging
with _staging(Path(sys.argv[1]), sys.argv[2]) as stage:
    (stage / "disk.qcow2").write_bytes(b"half a disk")
    print(stage, flush=True)
    time.sleep(600)
"""


def start_build(out: Path, version: str) -> tuple[subprocess.Popen[str], Path]:
    return start_child(_BUILD, str(out), version)


def test_a_killed_builds_staging_goes_at_the_next_build_a_live_ones_stays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    out = tmp_path / "output" / "debian-13"
    killed, killed_stage = start_build(out, "2026.12.05")
    live, live_stage = start_build(out, "2026.12.05.1")
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        assert (killed_stage / "disk.qcow2").is_file()  # nothing cleaned up after SIGKILL
        unowned = out / ".2026.12.04.partial-old"  # no lock file: not ours to judge, left alone
        unowned.mkdir()
        with builder._staging(out, "2026.12.05.2") as stage:
            (stage / "disk.qcow2").write_bytes(b"a whole disk")
            builder._publish(stage, out / "2026.12.05.2")
        assert not killed_stage.exists()
        assert f"removing {killed_stage}: left by a build that was killed" in caplog.text
        assert (live_stage / "disk.qcow2").read_bytes() == b"half a disk"
        assert unowned.is_dir()
        published = out / "2026.12.05.2"
        assert sorted(p.name for p in published.iterdir()) == ["disk.qcow2"]  # no lock file in the version
        assert sorted(p.name for p in out.iterdir()) == sorted([published.name, live_stage.name, unowned.name])
    finally:
        live.kill()
        live.wait(timeout=30)


def test_a_failed_build_leaves_no_staging(tmp_path: Path) -> None:
    out = tmp_path / "debian-13"
    with pytest.raises(RuntimeError), builder._staging(out, "1") as stage:
        (stage / "disk.qcow2").write_bytes(b"half a disk")
        raise RuntimeError("packer failed")
    assert list(out.iterdir()) == []
