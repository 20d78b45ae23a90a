"""Run ``audit_disk`` in a separate process as ``nobody`` (setpriv: no root, no groups, no capabilities),
the way a site audits an image it downloaded: the disk only readable, a scratch folder of its own."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
USER = "nobody"
SCRIPT = """\
import json, os, sys
from pathlib import Path
from pipeline.audit.report import SecuritySource, audit_disk
from pipeline.manifest import InstalledPackage
args = json.loads(sys.argv[1])
security = SecuritySource(*args["security"]) if args["security"] else None
packages = tuple(InstalledPackage(*p) for p in args["packages"]) if args["packages"] is not None else None
report = audit_disk(Path(args["disk"]), args["format"], scratch=Path(args["scratch"]), packages=packages,
                    security=security)
print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "report": report.to_dict()}))
"""


def _interpreter(env: dict[str, str]) -> list[str]:
    """This interpreter if ``nobody`` may run it, else the system's python3 of the same version with this
    environment's site-packages (this machine's interpreter lives under /root)."""
    for python in (sys.executable, "/usr/bin/python3"):
        probe = [*setpriv(), python, "-c", "import sys, requests, debian; print(sys.version_info[:2])"]
        out = subprocess.run(probe, env=env, capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip() == str(tuple(sys.version_info[:2])):
            return [python]
    raise AssertionError(f"no Python {sys.version_info[:2]} with the pipeline's dependencies runs as {USER}")


def setpriv() -> list[str]:
    return ["setpriv", f"--reuid={USER}", "--regid=nogroup", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"]


@contextlib.contextmanager
def shared_folder() -> Iterator[Path]:
    """A folder ``nobody`` can read (pytest's tmp_path is root's, mode 0700), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="audit-unprivileged-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def audit_as_nobody(
    disk: Path,
    fmt: str,
    scratch: Path,
    packages: list[tuple[str, str, str]] | None = None,
    security: tuple[str, str, str] | None = None,
) -> dict[str, Any]:
    """The audit run as ``nobody``; returns its uid/gid/groups and the report as JSON."""
    scratch.mkdir(parents=True, exist_ok=True)
    user = pwd.getpwnam(USER)
    os.chown(scratch, user.pw_uid, user.pw_gid)
    site = sysconfig.get_paths()["purelib"]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "PYTHONPATH": f"{ROOT}:{site}", "HOME": "/"}
    args = {"disk": str(disk), "format": fmt, "scratch": str(scratch), "packages": packages, "security": security}
    argv = [*setpriv(), *_interpreter(env), "-c", SCRIPT, json.dumps(args)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, cwd="/", timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result
