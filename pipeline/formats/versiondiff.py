"""What changed between two versions: packages, inputs, audit results, Debian changelog entries.

Pure data and comparisons (no I/O): ``invoke diff`` (``pipeline.diff``) fills them from two builds and
their images; the catalogue fills them from what it stores (version page and API).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pipeline.formats.debian_index import newer

MAX_ENTRIES = 30  # entries kept per package (the newest)
MAX_ENTRY_CHARS = 4000
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
