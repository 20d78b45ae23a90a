"""Carry out a rebuild plan: the recipe (build -> package -> audit -> publish -> endorse), appliance by appliance.

Appliances run in dependency order. A failure is recorded with the step it happened in and does not
stop the others; appliances layered on a failed one are skipped, saying why. The report's table is
what ``invoke rebuild`` prints, and ``report.ok`` its exit code.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from pipeline.appliance import Appliance
from pipeline.builder import BuildResult
from pipeline.errors import PipelineError
from pipeline.log import log, step
from pipeline.rebuild.decide import Decision
from pipeline.rebuild.plan import Plan, format_table
from pipeline.rebuild.retention import RetentionReport
from pipeline.recipe import STEPS, AuditOutcome, Stages, run_recipe

__all__ = ["AuditOutcome", "LostRace", "Outcome", "RebuildReport", "Stages", "execute"]


class LostRace(PipelineError):
    """Another run published this version of the appliance first (raised by ``Stages.publish``)."""


class Outcome(enum.StrEnum):
    SKIPPED = "skipped"  # nothing to do
    PLANNED = "planned"  # --dry-run: would be rebuilt
    PUBLISHED = "published"  # rebuilt and published, not endorsed (policy or no VOs)
    ENDORSED = "endorsed"  # rebuilt, published and endorsed for its VOs
    AUDIT_FAILED = "audit-failed"  # rebuilt and published, but not endorsed: the audit failed
    FAILED = "failed"  # a step failed
    BLOCKED = "blocked"  # its base failed in this run
    ALREADY_BUILT = "already-built"  # another run published the same version first: nothing to do

    @property
    def ok(self) -> bool:
        return self not in (Outcome.AUDIT_FAILED, Outcome.FAILED, Outcome.BLOCKED)


@dataclass
class ApplianceResult:
    decision: Decision
    outcome: Outcome
    version: str | None = None
    detail: str = ""
    steps: list[str] = field(default_factory=list)


@dataclass
class RebuildReport:
    results: list[ApplianceResult]
    retention: RetentionReport | None = None
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return all(r.outcome.ok for r in self.results) and (self.retention is None or self.retention.ok)

    def result(self, appliance: str) -> ApplianceResult:
        return next(r for r in self.results if r.decision.appliance == appliance)

    def summary(self) -> str:
        rows = [
            (
                r.decision.appliance,
                "rebuild" if r.decision.rebuild else "skip",
                str(r.outcome),
                r.version or r.decision.last_version or "-",
                r.detail or r.decision.why(),
            )
            for r in self.results
        ]
        lines = [format_table(("appliance", "decision", "outcome", "version", "why / what happened"), rows)]
        if self.retention is not None:
            lines.append(self.retention.summary())
        counts: dict[str, int] = {}
        for r in self.results:
            counts[r.outcome] = counts.get(r.outcome, 0) + 1
        tally = ", ".join(f"{n} {o}" for o, n in sorted(counts.items()))
        head = "dry run: nothing was built or changed" if self.dry_run else ("ok" if self.ok else "FAILED")
        lines.append(f"{head}: {tally or 'no appliances'}")
        return "\n".join(lines)


def execute(
    plan: Plan, stages: Stages, dry_run: bool = False, versions: Mapping[str, str] | None = None
) -> list[ApplianceResult]:
    """Run every planned rebuild in order; never let one appliance's failure stop the others.

    ``versions`` fixes each new version's name when the run decides (``history.free_version``)."""
    results: list[ApplianceResult] = []
    broken: dict[str, str] = {}  # appliance -> why its dependants cannot be built
    lost: set[str] = set()  # appliances another run published first: it builds their dependants too
    for decision in plan.decisions:
        appliance = plan.appliances[decision.appliance]
        if not decision.rebuild:
            results.append(ApplianceResult(decision, Outcome.SKIPPED))
            continue
        if appliance.base.appliance in lost:
            why = f"left to the run that built its base {appliance.base.appliance}: already built by another run"
            results.append(ApplianceResult(decision, Outcome.ALREADY_BUILT, detail=why))
            lost.add(appliance.name)
            continue
        if appliance.base.appliance in broken:
            why = f"not rebuilt: base {appliance.base.appliance} {broken[appliance.base.appliance]}"
            log.warning("%s: %s", appliance.name, why)
            results.append(ApplianceResult(decision, Outcome.BLOCKED, detail=why))
            broken[appliance.name] = "was blocked"
            continue
        if dry_run:
            results.append(ApplianceResult(decision, Outcome.PLANNED))
            continue
        result = _rebuild_one(appliance, decision, stages, (versions or {}).get(appliance.name))
        if result.outcome is Outcome.ALREADY_BUILT:
            lost.add(appliance.name)
        elif not result.outcome.ok:
            broken[appliance.name] = "failed" if result.outcome is Outcome.FAILED else "failed its audit"
        results.append(result)
    return results


def _rebuild_one(appliance: Appliance, decision: Decision, stages: Stages, version: str | None) -> ApplianceResult:
    name = appliance.name
    result = ApplianceResult(decision, Outcome.FAILED)
    log.info("%s: rebuilding because %s", name, decision.why())

    def done(step_name: str, outcome: object) -> None:
        result.steps.append(step_name)
        if isinstance(outcome, BuildResult):
            result.version = outcome.version

    vos = appliance.vos if appliance.rebuild.auto_endorse else ()
    try:
        with step(f"rebuild {name}"):
            cooked = run_recipe(appliance, stages, version=version, audit=True, endorse_for=vos, done=done)
        assert cooked.audit is not None  # asked for
        _outcome(appliance, cooked.audit, result)
    except LostRace as e:
        result.outcome = Outcome.ALREADY_BUILT
        result.detail = f"already built by another run: {e.message}"
        log.warning("%s: already built by another run: %s", name, e.message)
    except PipelineError as e:
        current = STEPS[len(result.steps)]
        result.outcome = Outcome.FAILED
        result.detail = f"{current} failed: {e.message.splitlines()[0]}"
        log.error("%s: %s failed:\n%s", name, current, e)
    except Exception as e:  # a bug in one stage must not stop the scheduled run for the others
        current = STEPS[len(result.steps)]
        result.outcome = Outcome.FAILED
        result.detail = f"{current} failed with an unexpected error: {type(e).__name__}: {e}"
        log.exception("%s: unexpected error in %s", name, current)
    return result


def _outcome(appliance: Appliance, audit: AuditOutcome, result: ApplianceResult) -> None:
    """What the recipe's run means for the report (the recipe endorsed only after a passing audit)."""
    reasons = ", ".join(result.decision.reasons)
    if not audit.passed:
        result.outcome = Outcome.AUDIT_FAILED
        result.detail = f"published, not endorsed: audit failed ({audit.detail})"
        return
    if not appliance.rebuild.auto_endorse or not appliance.vos:
        result.outcome = Outcome.PUBLISHED
        policy = "no VOs" if not appliance.vos else "rebuild.auto_endorse is off"
        result.detail = f"published ({reasons}); not endorsed: {policy}"
        return
    result.outcome = Outcome.ENDORSED
    result.detail = f"published and endorsed for {', '.join(appliance.vos)} ({reasons})"
