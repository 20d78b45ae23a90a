"""`.cache/vmi` is bounded: entries unused too long go, then the least recently used over the size bound."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from pipeline.rebuild.cache import entries, prune

from .conftest import ROOT

NOW = datetime(2026, 12, 2, 12, tzinfo=UTC)
DAY = 86400.0


def _file(path: Path, size: int, days_ago: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    t = NOW.timestamp() - days_ago * DAY
    os.utime(path, (t, t))
    return path


def _cache(root: Path) -> Path:
    cache = root / ".cache" / "vmi"
    _file(cache / "bootstrap" / "k1.tar", 5000, 40)  # old: gone by age, with its companion
    _file(cache / "bootstrap" / "k1.tar.sha256", 64, 40)
    _file(cache / "bootstrap" / "k2.tar", 4000, 3)  # least recently used of the young ones
    _file(cache / "bootstrap" / "k2.tar.sha256", 64, 3)
    _file(cache / "disks" / "d1.qcow2", 3000, 2)
    _file(cache / "images" / "sha512-ab.qcow2", 2000, 1)
    _file(cache / "archive" / "idx.meta.json", 10, 0.5)
    _file(cache / "archive" / "idx.versions.json", 10, 0.1)  # the entry's last use is its newest file
    return cache


def test_entries_group_companions_least_recently_used_first(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    assert [(e.name, e.size, len(e.files)) for e in entries(cache)] == [
        ("bootstrap/k1", 5064, 2),
        ("bootstrap/k2", 4064, 2),
        ("disks/d1", 3000, 1),
        ("images/sha512-ab", 2000, 1),
        ("archive/idx", 20, 2),
    ]
    assert entries(tmp_path / "none") == []


def test_prune_by_age_then_size(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    dry = prune(cache, NOW, max_bytes=6000, max_age_days=30, dry_run=True)
    assert [(e.name, why) for e, why in dry.removed] == [
        ("bootstrap/k1", "unused for 40 days (max 30)"),
        ("bootstrap/k2", "cache over 0.0 MiB (least recently used)"),
    ]
    assert (cache / "bootstrap" / "k1.tar").exists()  # a dry run removes nothing
    assert dry.summary().splitlines()[-1] == "cache: 5 entries, 0.0 MiB; would remove 2, 0.0 MiB; 0.0 MiB kept"
    done = prune(cache, NOW, max_bytes=6000, max_age_days=30)
    assert done.kept_bytes == 5020
    assert sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()) == [
        "archive/idx.meta.json",
        "archive/idx.versions.json",
        "disks/d1.qcow2",
        "images/sha512-ab.qcow2",
    ]
    assert prune(cache, NOW, max_bytes=6000, max_age_days=30).removed == []  # within bounds: nothing more


def test_invoke_cache_shows_then_prunes(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    for p in cache.rglob("*"):  # invoke uses real time: make the "old" entry really old
        if p.name.startswith("k1"):
            os.utime(p, (p.stat().st_mtime - 400 * DAY, p.stat().st_mtime - 400 * DAY))

    def invoke(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "invoke", "cache", *args], cwd=ROOT, capture_output=True, text=True,
            timeout=120, env={**os.environ, "VMI_CACHE_DIR": str(cache)},
        )  # fmt: skip

    shown = invoke()
    assert shown.returncode == 0, shown.stderr
    assert "bootstrap/k1" in shown.stdout and "would remove 1" in shown.stdout
    assert (cache / "bootstrap" / "k1.tar").exists()
    pruned = invoke("--prune", "--max-age-days", "30")
    assert pruned.returncode == 0, pruned.stderr
    assert "removed 1" in pruned.stdout and not (cache / "bootstrap" / "k1.tar").exists()
