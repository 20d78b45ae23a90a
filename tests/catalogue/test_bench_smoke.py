"""`bench/catalogue_bench.py --smoke` runs to the end (issue 15: a bench that crashes fails CI).

Nothing about speed is asserted here (speed lives in bench/); only that every endpoint answered and
the figures were printed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_catalogue_bench_smoke_prints_every_row(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    argv = [sys.executable, str(ROOT / "bench" / "catalogue_bench.py"), "--smoke"]
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for row in ("version list (50/page)", "image list (100/page)", "page: versions", "VO image.list (signed)"):
        assert out.count(row) == 2, out  # one row per client count (1 and 2)
    assert "cores, load average" in out and "worst list endpoint:" in out, out
