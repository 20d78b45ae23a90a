"""Every bench/ script runs in CI in its smoke mode, so a bench that crashes (or has no smoke mode)
fails here instead of rotting until someone needs its figures.

The scripts are discovered, not listed: a new bench/*.py is covered the day it lands. Each runs as
``python bench/X.py --smoke`` in a child process and must exit 0 and print at least one figure row.
Nothing here times anything: speed is what the benches print, never what a test asserts.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHES = sorted(p.name for p in (ROOT / "bench").glob("*.py") if not p.name.startswith("_"))
HANG_GUARD_SECONDS = 120  # a smoke run takes seconds; this only stops a hung one

# Benches whose owners add --smoke on their own branches. strict: once a bench gains it, this test
# XPASSes and fails, so its name must then be removed from here (the list shrinks to empty).
AWAITING_SMOKE: set[str] = set()

# A figure: a number with its unit ("0.18 s", "27.1 MiB/s", "393 req/s", "1.27x", "+4.2%"), or a
# table row of at least three numeric columns after a label (the catalogue bench's layout).
_UNIT = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?\s?(?:s|ms|µs|MiB/s|GiB/s|MB/s|req/s|x|%)(?![\w/])")
_TABLE = re.compile(r"^\s*[A-Za-z].*?(?:\s+[-+]?\d+(?:\.\d+)?){3,}\s*$")


def figure_rows(stdout: str) -> list[str]:
    """The lines of ``stdout`` that carry a measured figure (the machine's load line does not count)."""
    return [
        line
        for line in stdout.splitlines()
        if not line.lstrip().startswith("machine:") and (_UNIT.search(line) or _TABLE.match(line))
    ]


@pytest.mark.parametrize(
    ("line", "is_figure"),
    [
        ("  offline audit (qemu-img + debugfs + 21 checks, no index): 0.18 s  [failed: none]", True),
        ("  vmi put                              27.1", False),
        ("  vmi put                               0.3 s    27.1 MiB/s", True),
        ("version list (50/page)          1      312     62.4     14.2     20.1        0", True),
        ("ours vs bare convert: +4.2%  (target: within +10%)", True),
        ("  packer wall time                              170.0 s     -", True),
        ("machine: 2 cores, load average 0.42/0.50/0.61 (1/5/15 min)", False),
        ("3 appliances, 300 packages each, indexes: deb http://127.0.0.1:33629/debian bookworm main", False),
        ("disk: smoke.qcow2 (qcow2, 1.0 MiB, made from tests/endorse/disks.py)", False),
        ("usage: audit_bench.py [-h] [--disk DISK]", False),
    ],
)
def test_what_counts_as_a_figure_row(line: str, is_figure: bool) -> None:
    assert bool(figure_rows(line)) is is_figure


def test_every_bench_is_found() -> None:
    assert {"audit_bench.py", "build_timing.py", "rebuild_decision.py", "upload_bench.py"} <= set(BENCHES)
    assert AWAITING_SMOKE <= set(BENCHES), "a bench awaiting --smoke is gone: drop it from AWAITING_SMOKE"


@pytest.mark.parametrize(
    "bench",
    [
        pytest.param(b, marks=pytest.mark.xfail(strict=True, reason="its owner adds --smoke"))
        if b in AWAITING_SMOKE
        else b
        for b in BENCHES
    ],
)
def test_bench_smoke_mode_runs_and_prints_figures(bench: str, tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / bench), "--smoke"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_SECONDS,
        check=False,
    )
    output = f"--- stdout\n{proc.stdout}\n--- stderr (tail)\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, f"bench/{bench} --smoke exited {proc.returncode}\n{output}"
    assert figure_rows(proc.stdout), f"bench/{bench} --smoke printed no figure row\n{output}"
