"""Issue 12: what the README's commands write into the clone is git-ignored (`--download site-cache/`
put 380 MB into the clone), and the default settings' folders and files too."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _ignored(path: str) -> bool:
    probe = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT, check=False)
    assert probe.returncode in (0, 1), f"git check-ignore failed for {path}"
    return probe.returncode == 0


def test_what_the_readme_and_the_defaults_write_in_the_clone_is_ignored() -> None:
    readme = (ROOT / "README.md").read_text()
    relative = [p for p in re.findall(r"--(?:download|out) (\S+)", readme) if not p.startswith(("~", "/", "DIR"))]
    assert "site-cache/" in relative
    defaults = yaml.safe_load((ROOT / "invoke.yaml").read_text())["vmi"]
    written = [defaults[k] for k in ("output_dir", "work_dir", "cache_dir")]
    written += [defaults["repository"].removeprefix("file://./"), defaults["catalogue"].removeprefix("sqlite:///./")]
    for path in [*relative, *written]:
        probe = path.rstrip("/") + ("/some-image.qcow2" if path.endswith("/") or "." not in path else "")
        assert _ignored(probe), f"{path}: written into the clone by default, but not in .gitignore"
    assert not _ignored("pipeline/publish.py") and not _ignored("docs/site-cache.md")  # the check can fail
