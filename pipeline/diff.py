"""``invoke diff``: what changed between two versions of an appliance, and why N+1 exists.

Packages added, removed, upgraded and downgraded (from the two build manifests); for each change the
Debian changelog entries between the two versions, read offline from the newer image's
``/usr/share/doc/<package>/changelog.Debian.gz`` (debugfs on a raw copy: no mount, no root), with the
CVE ids they name and whether they were uploaded to the security suite; audit results that changed
(``audit.json`` of each version); inputs that changed (template, provisioners, variables, base, tools).
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from pipeline.errors import ArtifactError, CommandError
from pipeline.formats.debian_index import BadIndex, decompress_checked, newer
from pipeline.log import log
from pipeline.run import Limits, find_tool, run
from pipeline.settings import Settings

MAX_CHANGELOG_BYTES = 4 * 1024 * 1024  # one package's changelog, inflated
MAX_ENTRIES = 30  # entries kept per package (the newest)
MAX_ENTRY_CHARS = 4000
DOC_COPY_SECONDS = 600
CVE = re.compile(r"\bCVE-\d{4}-\d{4,7}\b")
HEADER = re.compile(r"^(?P<source>[a-z0-9][a-z0-9+.\-]*) \((?P<version>[^ ()]+)\) (?P<dist>[^;]+);")


class Kind(StrEnum):
    ADDED = "added"
    REMOVED = "removed"
    UPGRADED = "upgraded"
    DOWNGRADED = "downgraded"


@dataclass(frozen=True)
class ChangelogEntry:
    version: str
    distribution: str
    text: str
    cves: tuple[str, ...]

    @property
    def security(self) -> bool:
        return any(d.endswith("-security") for d in self.distribution.split())


@dataclass(frozen=True)
class PackageChange:
    name: str
    arch: str
    kind: Kind
    old: str | None
    new: str | None
    changelog: tuple[ChangelogEntry, ...] = ()

    @property
    def security(self) -> bool:
        """An upgrade that came (at least partly) from the security suite."""
        return self.kind is Kind.UPGRADED and any(e.security for e in self.changelog)

    @property
    def cves(self) -> tuple[str, ...]:
        return tuple(sorted({c for e in self.changelog for c in e.cves}))


@dataclass(frozen=True)
class Changed:
    """One named thing (an input, an audit check) whose value differs; None = absent on that side."""

    name: str
    old: str | None
    new: str | None


@dataclass(frozen=True)
class VersionDiff:
    appliance: str
    old: str
    new: str
    packages: tuple[PackageChange, ...]
    inputs: tuple[Changed, ...]
    audit: tuple[Changed, ...]
    base: Changed | None = None
    notes: tuple[str, ...] = field(default=())  # what could not be compared, and why

    def count(self, kind: Kind | str) -> int:
        return sum(p.kind == kind for p in self.packages)

    def summary(self) -> str:
        lines = [f"{self.appliance} {self.old} -> {self.new}"]
        if self.base is not None:
            lines.append(f"base: {self.base.old} -> {self.base.new}")
        if self.inputs:
            lines.append("inputs changed: " + ", ".join(_changed_text(c) for c in self.inputs))
        else:
            lines.append("inputs: unchanged")
        security = sum(p.security for p in self.packages)
        lines.append(
            f"packages: {self.count(Kind.UPGRADED)} upgraded ({security} from the security suite), "
            f"{self.count(Kind.ADDED)} added, {self.count(Kind.REMOVED)} removed, "
            f"{self.count(Kind.DOWNGRADED)} downgraded"
        )
        mark = {Kind.ADDED: "+", Kind.REMOVED: "-", Kind.UPGRADED: "^", Kind.DOWNGRADED: "v"}
        for p in self.packages:
            versions = " -> ".join(v for v in (p.old, p.new) if v is not None)
            tags = (" [security]" if p.security else "") + (f" {' '.join(p.cves)}" if p.cves else "")
            lines.append(f"  {mark[p.kind]} {p.name} {versions}{tags}")
            for e in p.changelog:
                first = next((ln.strip(" *") for ln in e.text.splitlines() if ln.strip(" *")), "")
                lines.append(f"      {e.version} ({e.distribution}): {first[:100]}")
        if self.audit:
            lines.append("audit changed: " + ", ".join(_changed_text(c) for c in self.audit))
        else:
            lines.append("audit: no check changed")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "appliance": self.appliance,
            "old": self.old,
            "new": self.new,
            "base": None if self.base is None else {"old": self.base.old, "new": self.base.new},
            "inputs": [{"name": c.name, "old": c.old, "new": c.new} for c in self.inputs],
            "audit": [{"check": c.name, "old": c.old, "new": c.new} for c in self.audit],
            "packages": [
                {
                    "name": p.name,
                    "arch": p.arch,
                    "change": str(p.kind),
                    "old": p.old,
                    "new": p.new,
                    "security": p.security,
                    "cves": list(p.cves),
                    "changelog": [
                        {"version": e.version, "distribution": e.distribution, "cves": list(e.cves), "text": e.text}
                        for e in p.changelog
                    ],
                }
                for p in self.packages
            ],
            "notes": list(self.notes),
        }


def _changed_text(c: Changed) -> str:
    if c.old is None:
        return f"{c.name} (new)"
    if c.new is None:
        return f"{c.name} (gone)"
    if len(c.old) == len(c.new) == 64:  # digests say only "changed"
        return c.name
    return f"{c.name} {c.old} -> {c.new}"


# --- comparing -------------------------------------------------------------------------------------


def package_changes(old: Iterable[tuple[str, str, str]], new: Iterable[tuple[str, str, str]]) -> list[PackageChange]:
    """Changes between two ``(name, version, arch)`` sets, by name and architecture, sorted by name."""
    before = {(n, a): v for n, v, a in old}
    after = {(n, a): v for n, v, a in new}
    changes = []
    for key in sorted(before.keys() | after.keys()):
        o, n = before.get(key), after.get(key)
        if o == n:
            continue
        if o is None:
            kind = Kind.ADDED
        elif n is None:
            kind = Kind.REMOVED
        else:
            kind = Kind.UPGRADED if newer(n, o) else Kind.DOWNGRADED
        changes.append(PackageChange(key[0], key[1], kind, o, n))
    return changes


def mapping_changes(old: Mapping[str, str], new: Mapping[str, str]) -> list[Changed]:
    return [Changed(k, old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]


def audit_results(report: Mapping[str, Any] | None) -> dict[str, str]:
    """``{check id: result}`` of an audit report (``audit.json`` or the catalogue's stored report)."""
    checks = (report or {}).get("checks") or []
    return {str(c["id"]): str(c["result"]) for c in checks if isinstance(c, Mapping) and "id" in c and "result" in c}


# --- changelogs ------------------------------------------------------------------------------------


def parse_changelog(text: str, since: str | None, limit: int = MAX_ENTRIES) -> tuple[ChangelogEntry, ...]:
    """The entries of a Debian changelog newer than ``since`` (all when None), newest first, bounded."""
    entries: list[ChangelogEntry] = []
    header: re.Match[str] | None = None
    body: list[str] = []

    def close() -> bool:
        if header is None:
            return True
        version = header["version"]
        if since is not None and not newer(version, since):
            return False
        text = "\n".join(body).strip("\n")[:MAX_ENTRY_CHARS]
        entries.append(ChangelogEntry(version, header["dist"].strip(), text, tuple(dict.fromkeys(CVE.findall(text)))))
        return len(entries) < limit

    for line in text.splitlines():
        found = HEADER.match(line)
        if found:
            if not close():
                return tuple(entries)
            header, body = found, []
        elif header is not None and not line.startswith(" -- "):
            body.append(line)
    close()
    return tuple(entries)


CHANGELOG_FILES = ("changelog.Debian.gz", "changelog.gz")  # a native package (base-files, apt) has only the second


def read_changelog(doc: Path, names: Sequence[str]) -> str | None:
    """The first ``<doc>/<name>/changelog.Debian.gz`` found (binary name, then source; ``changelog.gz``
    of a native package), inflated, bounded. An upstream ``changelog.gz`` has no Debian headers: no entries."""
    root = doc.resolve()
    for file, name in ((f, n) for f in CHANGELOG_FILES for n in names):
        path = (doc / name / file).resolve()  # doc/<pkg> may link to a sibling folder
        if not path.is_relative_to(root) or not path.is_file():
            continue
        data = path.read_bytes()[: MAX_CHANGELOG_BYTES + 1]
        try:
            return decompress_checked(data, "gz", MAX_CHANGELOG_BYTES).decode("utf-8", errors="replace")
        except BadIndex as e:
            log.warning("%s: unreadable changelog (%s)", path, e)
    return None


@contextlib.contextmanager
def doc_tree(disk: Path, fmt: str, scratch: Path) -> Iterator[Path]:
    """``/usr/share/doc`` of a disk image copied out read-only (qemu-img + debugfs, no mount, no root)."""
    from pipeline.audit.disk import TOOL_HINTS, _remove_tree, find_root_partition, inspect_format

    inspect_format(disk, fmt)
    scratch.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="diff-", dir=scratch))
    try:
        raw = disk
        if fmt != "raw":
            raw = work / "disk.raw"
            argv = [find_tool("qemu-img"), "convert", "-f", fmt, "-O", "raw", str(disk), str(raw)]
            run(argv, limits=Limits(cpu_seconds=1800), timeout=1800)
        part = find_root_partition(raw)
        debugfs = find_tool("debugfs", TOOL_HINTS["debugfs"])
        argv = [debugfs, "-c", "-R", f"rdump /usr/share/doc {work}", f"{raw}?offset={part.start}"]
        try:
            result = run(argv, timeout=DOC_COPY_SECONDS, limits=Limits(file_size_bytes=64 * 1024**2), check=False)
        except CommandError as e:
            raise ArtifactError(f"{disk}: copying /usr/share/doc out took over {DOC_COPY_SECONDS}s") from e
        if result.returncode != 0 or not (work / "doc").is_dir():
            raise ArtifactError(f"{disk}: debugfs could not read /usr/share/doc (exit {result.returncode})")
        yield work / "doc"
    finally:
        _remove_tree(work)


def with_changelogs(changes: list[PackageChange], doc: Path, sources: Mapping[str, str]) -> list[PackageChange]:
    """Each upgrade, downgrade or addition with the changelog entries the newer image documents."""
    out = []
    for p in changes:
        if p.new is None:
            out.append(p)
            continue
        text = read_changelog(doc, list(dict.fromkeys([p.name, sources.get(p.name, p.name)])))
        since = p.old if p.kind is Kind.UPGRADED else None
        limit = MAX_ENTRIES if p.kind is Kind.UPGRADED else 1
        entries = parse_changelog(text, since, limit) if text else ()
        out.append(PackageChange(p.name, p.arch, p.kind, p.old, p.new, entries))
    return out


# --- the use case ----------------------------------------------------------------------------------


def diff_versions(settings: Settings, appliance: str, old: str, new: str, changelogs: bool = True) -> VersionDiff:
    """Compare two built versions in the output folder (manifests, audits, the newer image's changelogs)."""
    import json

    from pipeline.audit.report import AUDIT_FILE
    from pipeline.manifest import find_version

    old_dir, before = find_version(settings.output_dir, appliance, old)
    new_dir, after = find_version(settings.output_dir, appliance, new)
    changes = package_changes(
        ((p.name, p.version, p.arch) for p in before.packages), ((p.name, p.version, p.arch) for p in after.packages)
    )
    notes = []
    if changelogs and any(p.new is not None for p in changes):
        disk = after.artifact("build-disk")
        path = new_dir / disk.name
        if path.is_file():
            with doc_tree(path, disk.format, settings.work_dir / "diff") as doc:
                changes = with_changelogs(changes, doc, {p.name: p.source or p.name for p in after.packages})
        else:
            notes.append(f"{path}: the build disk is gone, so no changelog entries")
    audits = []
    for folder in (old_dir, new_dir):
        try:
            audits.append(audit_results(json.loads((folder / AUDIT_FILE).read_text())))
        except FileNotFoundError:
            audits.append({})
            notes.append(f"{folder / AUDIT_FILE}: no audit (invoke audit-image)")
        except (json.JSONDecodeError, TypeError) as e:
            raise ArtifactError(f"{folder / AUDIT_FILE}: not a readable audit report ({e})") from e
    base = None
    if (before.base.ref, before.base.digest) != (after.base.ref, after.base.digest):
        base = Changed(
            "base", f"{before.base.ref} {before.base.digest[:19]}", f"{after.base.ref} {after.base.digest[:19]}"
        )
    return VersionDiff(
        appliance,
        before.version,
        after.version,
        tuple(changes),
        tuple(mapping_changes(before.inputs, after.inputs)),
        tuple(mapping_changes(audits[0], audits[1])),
        base,
        tuple(notes),
    )
