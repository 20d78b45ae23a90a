"""A long-running child (Packer, mmdebstrap, a QEMU guest) stops when the pipeline that started it
dies, even by SIGKILL, where none of the pipeline's own clean-up runs. Real processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The pipeline as a separate process: it starts a child the way a build does, prints the child's
# pid, then waits to be killed.
_PIPELINES = {
    "spawn": """
import time
from pipeline import run
with run.spawn(["sleep", "600"]) as proc:
    print(proc.pid, flush=True)
    time.sleep(600)
""",
    "stream": """
from pipeline import run
run.stream(["sh", "-c", "echo $$; exec sleep 600"], on_line=lambda line: print(line, flush=True))
""",
}


def running(pid: int) -> bool:
    """Whether ``pid`` exists and has not exited (a zombie waiting to be reaped has exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize("how", sorted(_PIPELINES))
def test_a_killed_pipelines_child_stops(how: str) -> None:
    pipeline = subprocess.Popen([sys.executable, "-c", _PIPELINES[how]], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert pipeline.stdout is not None
    child = int(pipeline.stdout.readline())
    try:
        assert running(child)
        pipeline.send_signal(signal.SIGKILL)
        pipeline.wait(timeout=30)
        deadline = time.monotonic() + 30
        while running(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not running(child), f"{how}: child {child} outlived the pipeline that started it"
    finally:
        if running(child):
            subprocess.run(["kill", "-9", str(child)], check=False)
