"""The rebuild plan: every selected appliance, in dependency order, with its decision and reasons."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pipeline.appliance import Appliance, build_order, load_all
from pipeline.errors import ArtifactError, ConfigError
from pipeline.manifest import BuildManifest
from pipeline.rebuild.archive import ArchiveIndex
from pipeline.rebuild.decide import ApplianceState, Decision, Finding, Reason, decide
from pipeline.rebuild.history import History, LocalHistory
from pipeline.settings import Settings

# (appliance) -> (inputs digest, {component: digest}); the build's content-addressed cache key.
InputsOf = Callable[[Appliance], tuple[str, Mapping[str, str]]]


@dataclass(frozen=True)
class Plan:
    """Decisions in build order (each appliance after the one it is layered on)."""

    decisions: tuple[Decision, ...]
    appliances: Mapping[str, Appliance]

    @property
    def to_rebuild(self) -> list[str]:
        return [d.appliance for d in self.decisions if d.rebuild]

    def summary(self) -> str:
        rows = [
            (d.appliance, "rebuild" if d.rebuild else "skip", d.last_version or "-", d.why()) for d in self.decisions
        ]
        return format_table(("appliance", "decision", "newest", "why"), rows)


def select(settings: Settings, names: Sequence[str] | None) -> dict[str, Appliance]:
    """The named appliances (all when ``names`` is empty), with a clear error for an unknown one."""
    every = load_all(settings.templates_dir, settings.provisioners_dir)
    if not names:
        return every
    unknown = [n for n in names if n not in every]
    if unknown:
        raise ConfigError(
            [f"--appliance {n}: no appliance named {n!r} under {settings.templates_dir}" for n in unknown],
            hint="known appliances: " + ", ".join(sorted(every)),
        )
    return {n: every[n] for n in names}


def newest_manifest(output_dir: Path, name: str) -> BuildManifest | None:
    """The manifest of the newest version of ``name`` built in ``output_dir``, or None (offline use)."""
    return LocalHistory(output_dir).newest(name)


def gather_state(
    settings: Settings, appliance: Appliance, inputs_of: InputsOf, history: History, now: datetime
) -> ApplianceState:
    digest, components = inputs_of(appliance)
    last = history.newest(appliance.name)
    base_latest = base_outdated = latest_outdated = None
    if appliance.base.appliance is not None:
        base = history.newest(appliance.base.appliance)
        base_latest = base.version if base is not None else None
        if base_latest is not None:
            latest_outdated = history.outdated(appliance.base.appliance, base_latest, now)
        if last is not None and last.base.kind == "appliance":  # the exact base it was built on (lineage)
            built_on, _, version = last.base.ref.partition("@")
            base_outdated = history.outdated(built_on, version, now) if version else None
    return ApplianceState(
        appliance=appliance,
        inputs_digest=digest,
        last=last,
        base_latest=base_latest,
        inputs=dict(components),
        base_outdated=base_outdated,
        base_latest_outdated=latest_outdated,
    )


def make_plan(
    settings: Settings,
    appliances: Mapping[str, Appliance],
    inputs_of: InputsOf,
    archive: ArchiveIndex | None,
    now: datetime,
    history: History | None = None,
) -> Plan:
    """Decide for each appliance in build order; a base planned for rebuild pulls its dependants along.

    ``history`` says what was built (``history.open_history``: the catalogue); default ``output/``."""
    history = history or LocalHistory(settings.output_dir)
    decisions: list[Decision] = []
    rebuilding: set[str] = set()
    for appliance in build_order(appliances.values()):
        base_rebuilding = appliance.base.appliance in rebuilding
        try:
            state = gather_state(settings, appliance, inputs_of, history, now)
        except (ArtifactError, ConfigError) as e:
            # no base output yet (it is built first in this run), or an unreadable manifest or
            # definition: rebuilding is the way to repair either
            if base_rebuilding:
                finding = Finding(
                    Reason.BASE_REBUILDING, f"base {appliance.base.appliance} is rebuilt first in this run"
                )
            else:
                finding = Finding(Reason.INPUTS_CHANGED, f"cannot read its state: {e.message}")
            decisions.append(Decision(appliance.name, True, (finding,), None))
            rebuilding.add(appliance.name)
            continue
        decision = decide(state, archive, now, base_rebuilding=base_rebuilding)
        if decision.rebuild:
            rebuilding.add(appliance.name)
        decisions.append(decision)
    return Plan(tuple(decisions), dict(appliances))


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table; the last column is left unpadded (it holds the long reasons)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for r in [header, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(r, widths, strict=False)]
        lines.append("  ".join([*cells, str(r[-1])]).rstrip())
    return "\n".join(lines)
