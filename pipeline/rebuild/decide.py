"""Does an appliance need a rebuild, and why?

Like EC2 Image Builder's "expression match and dependency updates available": the schedule only
asks; an appliance is rebuilt when something changed. The reasons, checked in this order:
never built; its inputs changed (the build's content-addressed inputs digest differs from the newest
version's manifest); the base version it was built on is outdated (archived, expired or revoked in
the catalogue, ``catalogue.lineage``) and a current one exists; its base appliance has a newer version
than the one it was built on (or is being rebuilt in this run); packages in its newest version have
newer versions in the archive (security suites first); it is older than ``rebuild.max_age_days``.
Otherwise: skip, and say why.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pipeline.appliance import Appliance
from pipeline.manifest import BuildManifest, version_sort_key
from pipeline.rebuild.archive import ArchiveError, ArchiveIndex, PackageUpdate

# How many package updates a reason lists by name before summarising the rest.
SHOWN_UPDATES = 5


class Reason(enum.StrEnum):
    NEVER_BUILT = "never-built"
    INPUTS_CHANGED = "inputs-changed"
    BASE_OUTDATED = "base-outdated"
    BASE_UPDATED = "base-updated"
    BASE_REBUILDING = "base-rebuilding"
    SECURITY_UPDATES = "security-updates"
    PACKAGE_UPDATES = "package-updates"
    TOO_OLD = "too-old"
    # not reasons to rebuild: what was checked and found current, or could not be checked
    UP_TO_DATE = "up-to-date"
    UNCHECKED = "unchecked"
    NO_CURRENT_BASE = "no-current-base"  # outdated, but the base has no current version to rebuild on


REBUILD_REASONS = frozenset(Reason) - {Reason.UP_TO_DATE, Reason.UNCHECKED, Reason.NO_CURRENT_BASE}


@dataclass(frozen=True)
class Finding:
    reason: Reason
    detail: str

    def __str__(self) -> str:
        return self.detail if self.reason is Reason.UP_TO_DATE else f"{self.reason}: {self.detail}"


@dataclass(frozen=True)
class ApplianceState:
    """What the decision looks at for one appliance (gathered by ``plan.gather_state``)."""

    appliance: Appliance
    inputs_digest: str  # what a build now would be made of
    last: BuildManifest | None  # the newest built version
    base_latest: str | None = None  # newest version of the base appliance (layered appliances only)
    inputs: Mapping[str, str] = field(default_factory=dict)  # component -> digest, to name what changed
    # why the base version ``last`` was built on, and ``base_latest``, are no longer current (None: current,
    # or unknown offline): archived, expired, revoked wherever endorsed (``catalogue.contract.outdated_reason``)
    base_outdated: str | None = None
    base_latest_outdated: str | None = None


@dataclass(frozen=True)
class Decision:
    appliance: str
    rebuild: bool
    findings: tuple[Finding, ...]
    last_version: str | None

    @property
    def reasons(self) -> list[Reason]:
        return [f.reason for f in self.findings if f.reason in REBUILD_REASONS]

    def why(self) -> str:
        """One line: the reasons to rebuild, or why it is skipped."""
        shown = [f for f in self.findings if f.reason in REBUILD_REASONS] if self.rebuild else list(self.findings)
        return "; ".join(str(f) for f in shown)


def parse_created(created: str) -> datetime:
    return datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def decide(
    state: ApplianceState,
    archive: ArchiveIndex | None,
    now: datetime,
    base_rebuilding: bool = False,
) -> Decision:
    """Decide for one appliance; ``archive`` None skips the package check (and says so)."""
    a, last = state.appliance, state.last
    if last is None:
        return Decision(a.name, True, (Finding(Reason.NEVER_BUILT, "no built version yet"),), None)
    found: list[Finding] = []
    current: list[Finding] = []
    if last.inputs_digest != state.inputs_digest:
        changed = _changed_inputs(last, state)
        found.append(
            Finding(
                Reason.INPUTS_CHANGED,
                f"inputs digest {last.inputs_digest[:12]} -> {state.inputs_digest[:12]}" + changed,
            )
        )
    else:
        current.append(Finding(Reason.UP_TO_DATE, f"inputs unchanged ({state.inputs_digest[:12]})"))
    if a.base.appliance is not None:
        found_base, current_base = _base_findings(a.base.appliance, last, state, base_rebuilding)
        found += found_base
        current += current_base
    found_pkgs, current_pkgs = _package_findings(last, archive)
    found += found_pkgs
    current += current_pkgs
    age = (now - parse_created(last.created)).total_seconds() / 86400
    days = f"{age:.0f} day{'' if round(age) == 1 else 's'} old"
    if age > a.rebuild.max_age_days:
        found.append(Finding(Reason.TOO_OLD, f"{last.version} is {days} (max {a.rebuild.max_age_days})"))
    else:
        current.append(Finding(Reason.UP_TO_DATE, f"{last.version} is {days}"))
    return Decision(a.name, bool(found), (*found, *current), last.version)


def _base_findings(
    base: str, last: BuildManifest, state: ApplianceState, base_rebuilding: bool
) -> tuple[list[Finding], list[Finding]]:
    """A layered appliance: is its base being rebuilt, outdated (lineage) or newer than it was built on?"""
    built_on = last.base.ref.partition("@")[2] if last.base.kind == "appliance" else ""
    latest = state.base_latest
    outdated = f"{last.version} is outdated: {state.base_outdated}" if state.base_outdated else None
    if base_rebuilding:
        found = [Finding(Reason.BASE_REBUILDING, f"base {base} is rebuilt first in this run")]
        return found + ([Finding(Reason.BASE_OUTDATED, outdated)] if outdated else []), []
    if outdated:
        if latest and latest != built_on and not state.base_latest_outdated:
            return [Finding(Reason.BASE_OUTDATED, f"{outdated}; rebuild on {base} {latest}")], []
        why_not = f" ({state.base_latest_outdated})" if latest and latest != built_on else ""
        return [], [
            Finding(
                Reason.NO_CURRENT_BASE,
                f"{outdated}, and {base} has no current version to rebuild on{why_not}: "
                f"build one first (invoke rebuild --appliance {base})",
            )
        ]
    if latest and (not built_on or version_sort_key(latest) > version_sort_key(built_on)):
        return [Finding(Reason.BASE_UPDATED, f"base {base} {latest} is newer than {built_on or last.base.ref}")], []
    return [], [Finding(Reason.UP_TO_DATE, f"base {last.base.ref} is the newest")]


def _changed_inputs(last: BuildManifest, state: ApplianceState) -> str:
    """Name the changed components when the build exposes them (``last.inputs`` vs now)."""
    now_inputs = state.inputs
    if not now_inputs:
        return ""
    changed = sorted(k for k in set(last.inputs) | set(now_inputs) if last.inputs.get(k) != now_inputs.get(k))
    return f" ({', '.join(changed)})" if changed else ""


def _package_findings(last: BuildManifest, archive: ArchiveIndex | None) -> tuple[list[Finding], list[Finding]]:
    if archive is None:
        return [], [Finding(Reason.UNCHECKED, "package check skipped")]
    if not last.base.sources:
        return [], [Finding(Reason.UNCHECKED, f"{last.version} records no apt sources to check packages against")]
    if not last.packages:
        return [], [Finding(Reason.UNCHECKED, f"{last.version} records no package list")]
    try:
        updates = archive.updates(last.packages, last.base.sources, last.arch)
    except ArchiveError as e:
        return [], [Finding(Reason.UNCHECKED, f"package check failed: {e.message}")]
    security = [u for u in updates if u.security]
    other = [u for u in updates if not u.security]
    found = []
    if security:
        found.append(Finding(Reason.SECURITY_UPDATES, _list(security)))
    if other:
        found.append(Finding(Reason.PACKAGE_UPDATES, _list(other)))
    if found:
        return found, []
    return [], [Finding(Reason.UP_TO_DATE, f"all {len(last.packages)} packages current")]


def _list(updates: Sequence[PackageUpdate]) -> str:
    shown = ", ".join(str(u) for u in updates[:SHOWN_UPDATES])
    more = len(updates) - SHOWN_UPDATES
    return f"{len(updates)} newer: {shown}" + (f" and {more} more" if more > 0 else "")
