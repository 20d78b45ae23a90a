"""``invoke diff``: what changed between two versions of an appliance, and why N+1 exists.

Packages added, removed, upgraded and downgraded (from the two build manifests); for each change the
Debian changelog entries between the two versions, read offline from the newer image's
``/usr/share/doc/<package>/changelog.Debian.gz`` (debugfs on a raw copy: no mount, no root), with the
CVE ids they name and whether they were uploaded to the security suite; audit results that changed
(``audit.json`` of each version); inputs that changed (template, provisioners, variables, base, tools).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from pipeline.errors import ArtifactError
from pipeline.formats.debian_index import BadIndex, decompress_checked
from pipeline.formats.versiondiff import (
    MAX_ENTRIES,
    Changed,
    Kind,
    PackageChange,
    VersionDiff,
    audit_results,
    mapping_changes,
    package_changes,
    parse_changelog,
)
from pipeline.log import log
from pipeline.settings import Settings

MAX_CHANGELOG_BYTES = 4 * 1024 * 1024  # one package's changelog, inflated
DOC_COPY_SECONDS = 600

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

    from pipeline.audit.disk import folder_copy
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
            with folder_copy(path, disk.format, settings.work_dir / "diff", "/usr/share/doc", DOC_COPY_SECONDS) as top:
                doc = top / "usr" / "share" / "doc"
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
