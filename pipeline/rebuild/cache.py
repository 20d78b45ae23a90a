"""Bound ``.cache/vmi`` in size and age (``invoke cache --prune``; ``invoke rebuild`` prunes after a run).

The cache only speeds builds up (bootstrap tarballs, base disks, fetched base images, package
indexes, tool versions): everything in it can be made again, and a build re-verifies what it takes
from it. An entry is a file with its companions (``<key>.tar`` + ``<key>.tar.sha256``); its last use
is the newest of its files' access and modification times. Entries unused for longer than
``max_age_days`` go first, then the least recently used until the cache fits in ``max_bytes``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from pipeline.log import log
from pipeline.rebuild.plan import format_table

MAX_BYTES = 20 * 1024**3  # a few bootstrap tarballs, base disks and fetched base images
MAX_AGE_DAYS = 30.0  # a monthly rebuild still finds its bootstrap tarball


@dataclass(frozen=True)
class Entry:
    name: str  # <subfolder>/<key>
    files: tuple[Path, ...]
    size: int
    last_used: float  # epoch seconds

    def age_days(self, now: datetime) -> float:
        return (now.timestamp() - self.last_used) / 86400


@dataclass
class PruneReport:
    entries: list[Entry]
    removed: list[tuple[Entry, str]] = field(default_factory=list)  # entry, why
    dry_run: bool = False

    @property
    def kept_bytes(self) -> int:
        gone = {e.name for e, _ in self.removed}
        return sum(e.size for e in self.entries if e.name not in gone)

    def summary(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        rows = [(e.name, _mib(e.size), why) for e, why in self.removed]
        lines = [format_table(("entry", "size", f"{verb} because"), rows)] if rows else []
        total = sum(e.size for e in self.entries)
        lines.append(
            f"cache: {len(self.entries)} entries, {_mib(total)}; {verb} {len(self.removed)}, "
            f"{_mib(total - self.kept_bytes)}; {_mib(self.kept_bytes)} kept"
        )
        return "\n".join(lines)


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB"


def entries(cache_dir: Path) -> list[Entry]:
    """The cache's entries, least recently used first."""
    groups: dict[str, list[Path]] = {}
    if cache_dir.is_dir():
        for path in sorted(p for p in cache_dir.rglob("*") if p.is_file() and not p.is_symlink()):
            rel = path.relative_to(cache_dir)
            key = "/".join([*rel.parts[:-1], rel.name.lstrip(".").split(".")[0]])
            groups.setdefault(key, []).append(path)
    found = []
    for key, files in groups.items():
        stats = [f.stat() for f in files]
        last = max(max(s.st_atime, s.st_mtime) for s in stats)
        found.append(Entry(key, tuple(files), sum(s.st_size for s in stats), last))
    return sorted(found, key=lambda e: (e.last_used, e.name))


def prune(
    cache_dir: Path,
    now: datetime,
    max_bytes: int = MAX_BYTES,
    max_age_days: float = MAX_AGE_DAYS,
    dry_run: bool = False,
) -> PruneReport:
    """Remove entries unused for ``max_age_days``, then the least recently used beyond ``max_bytes``."""
    report = PruneReport(entries(cache_dir), dry_run=dry_run)
    size = sum(e.size for e in report.entries)
    for e in report.entries:
        if e.age_days(now) > max_age_days:
            why = f"unused for {e.age_days(now):.0f} days (max {max_age_days:g})"
        elif size > max_bytes:
            why = f"cache over {_mib(max_bytes)} (least recently used)"
        else:
            continue
        report.removed.append((e, why))
        size -= e.size
    if not dry_run:
        _remove(f for e, _ in report.removed for f in e.files)
    return report


def _remove(files: Iterable[Path]) -> None:
    for f in files:
        try:
            f.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:  # a cache that cannot be pruned must not fail the run
            log.warning("cache: cannot remove %s: %s", f, e)
