"""Lint and type checks are part of the test suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "argv",
    [
        [sys.executable, "-m", "ruff", "check", "pipeline", "tests", "tasks.py", "bench"],
        [sys.executable, "-m", "mypy", "pipeline"],
    ],
    ids=["ruff", "mypy-strict"],
)
def test_static_checks(argv: list[str]) -> None:
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_only_run_module_uses_subprocess() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "pipeline").rglob("*.py")
        if p.name != "run.py" and "import subprocess" in p.read_text()
    ]
    assert offenders == []


def test_every_task_has_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "--list"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    listed = {line.split()[0] for line in proc.stdout.splitlines()[1:] if line.strip()}
    expected = {
        "validate",
        "build",
        "package",
        "verify-ova",
        "publish",
        "release",
        "serve",
        "catalogue-migrate",
        "audit",
        "audit-image",
        "endorse",
        "dev-ca",
        "verify-list",
        "rebuild",
        "ci-matrix",
        "new-appliance",
    }
    assert expected <= listed
    for name in expected:
        out = subprocess.run(
            [sys.executable, "-m", "invoke", name, "--help"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        assert "Docstring:\n  none" not in out and "Docstring:" in out, name
