"""A build-like process for tests that stop builds the hard way (SIGKILL: no clean-up runs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def start_child(code: str, *args: str) -> tuple[subprocess.Popen[str], Path]:
    """Run ``code`` (Python, from the repository root, ``args`` in ``sys.argv[1:]``); returns the
    process and the path it prints on its first line once it is ready."""
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())
