"""The recipe: build -> package -> [audit] -> publish -> [endorse], the one function both
``invoke release`` and ``invoke rebuild`` run (after mkosi's ``build_image()``).

Each step takes what the previous one returned -- ``BuildResult -> PackageResult -> PublishResult ->
EndorseResult`` -- so the appliance definition is parsed once and the build manifest loaded once per
run, and nothing hands a ``(name, version)`` pair to the next step to look up again. Each step
decides for itself whether it applies (an up-to-date build is reused, a complete package is not
made again); each result can be reloaded from its version folder (``BuildResult.load``,
``PackageResult.load``, and from their receipts ``PublishResult.load``, ``EndorseResult.load``), which
is how ``invoke package``/``publish``/``endorse`` start half-way through. Publish always runs again
(it is idempotent): a receipt says what was done, but only the repository and the catalogue can say
it still holds, and publish proves both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pipeline.appliance import Appliance, find_appliance
from pipeline.audit.report import AuditReport, audit_and_record
from pipeline.builder import BuildResult, build_definition
from pipeline.catalogue.client import Catalogue
from pipeline.endorse import EndorseResult, endorse_published
from pipeline.manifest import BuildManifest
from pipeline.package import PackageResult, package_build
from pipeline.publish import PUBLISHED, PublishResult, publish_packaged
from pipeline.repository import UploadTuning
from pipeline.settings import Settings

STEPS = ("build", "package", "audit", "publish", "endorse")  # in recipe order


@dataclass(frozen=True)
class AuditOutcome:
    passed: bool
    detail: str  # e.g. "27 checks passed" or the ids of the failing checks
    report: AuditReport | None = None


class Stages(Protocol):
    """The steps of the recipe (``RecipeStages`` runs the real ones; the rebuild adds its race checks)."""

    def build(self, appliance: Appliance, version: str | None = None) -> BuildResult: ...
    def package(self, built: BuildResult) -> PackageResult: ...
    def audit(self, packaged: PackageResult) -> AuditOutcome: ...
    def publish(self, packaged: PackageResult) -> PublishResult: ...
    def endorse(self, published: PublishResult, vo: str) -> EndorseResult: ...


@dataclass(frozen=True)
class RecipeResult:
    built: BuildResult
    packaged: PackageResult
    published: PublishResult
    audit: AuditOutcome | None = None  # None: not asked for (release)
    endorsed: tuple[EndorseResult, ...] = ()


def _ignore(step_name: str, result: object) -> None:
    pass


def run_recipe(
    appliance: Appliance,
    stages: Stages,
    *,
    version: str | None = None,
    audit: bool = False,
    endorse_for: Sequence[str] = (),
    done: Callable[[str, object], None] = _ignore,
) -> RecipeResult:
    """Run the steps in order; ``done(step, result)`` after each (the rebuild's report follows it).

    ``audit``: audit the packaged version before it is published; ``endorse_for``: the VOs to endorse
    the published version for, which happens only after a passing audit."""
    built = stages.build(appliance, version)
    done("build", built)
    packaged = stages.package(built)
    done("package", packaged)
    audited = None
    if audit:
        audited = stages.audit(packaged)
        done("audit", audited)
    published = stages.publish(packaged)
    done("publish", published)
    endorsed: tuple[EndorseResult, ...] = ()
    if endorse_for and audited is not None and audited.passed:
        endorsed = tuple(stages.endorse(published, vo) for vo in endorse_for)
        done("endorse", endorsed)
    return RecipeResult(built, packaged, published, audited, endorsed)


class RecipeStages:
    """The real stages. ``force``: build even when an up-to-date build exists (the rebuild's case:
    newer packages or age leave the inputs unchanged)."""

    def __init__(self, settings: Settings, *, force: bool = False, tuning: UploadTuning | None = None) -> None:
        self.settings = settings
        self.force = force
        self.tuning = tuning
        self._audits: dict[tuple[str, str], AuditReport] = {}  # audited, to store once registered

    def build(self, appliance: Appliance, version: str | None = None) -> BuildResult:
        return build_definition(self.settings, appliance, version, force=self.force)

    def package(self, built: BuildResult) -> PackageResult:
        if packaged(built.version_dir, built.manifest):
            # a rerun after a failed publish: the packages are reproducible, so making them again only costs time
            return PackageResult.of_build(built.definition, built.version_dir, built.manifest)
        return package_build(built)

    def audit(self, packaged: PackageResult) -> AuditOutcome:
        assert packaged.manifest is not None  # the recipe packages built versions only
        # before publish the version is not registered: the publish step stores the report with it
        report = audit_and_record(self.settings, packaged.definition, packaged.out_dir, packaged.manifest, store=False)
        self._audits[packaged.appliance, packaged.version] = report
        if report.passed:
            return AuditOutcome(True, f"{len(report.checks)} checks passed", report)
        return AuditOutcome(False, "failed: " + ", ".join(c.id for c in report.failures), report)

    def publish(self, packaged: PackageResult) -> PublishResult:
        return self.publish_with(packaged, None)

    def publish_with(self, packaged: PackageResult, catalogue: Catalogue | None) -> PublishResult:
        """Publish on ``catalogue`` if the caller holds one open (else publish opens its own), storing the
        audit report of this version, if the audit step made one, in the same session."""
        report = self._audits.pop((packaged.appliance, packaged.version), None)
        audit = report.to_dict() if report is not None else None
        return publish_packaged(self.settings, packaged, tuning=self.tuning, catalogue=catalogue, audit=audit)

    def endorse(self, published: PublishResult, vo: str) -> EndorseResult:
        return endorse_published(self.settings, published, vo)


def packaged(version_dir: Path, manifest: BuildManifest) -> bool:
    """Every required package artifact is recorded and present with its recorded size."""
    found = {a.role: a for a in manifest.artifacts}
    return all(
        role in found
        and (version_dir / found[role].name).is_file()
        and (version_dir / found[role].name).stat().st_size == found[role].size
        for role, required in PUBLISHED
        if required
    )


# -- release: build + package + publish ---------------------------------------------------------


@dataclass(frozen=True)
class ReleaseResult:
    steps: tuple[str, ...]  # the summary of each stage
    publish: PublishResult
    embedded: bool  # the default file repository + in-process catalogue: `invoke serve` shows it

    def summary(self) -> str:
        text = "\n\n".join(self.steps)
        if self.embedded and self.publish.catalogue_url:
            text += f"\n\nrun `invoke serve`, then open {self.publish.catalogue_url}"
        return text


def release_appliance(settings: Settings, name: str, tuning: UploadTuning | None = None) -> ReleaseResult:
    """Build (or reuse an up-to-date build), package and publish an appliance in one go."""
    appliance = find_appliance(settings.templates_dir, name, settings.provisioners_dir)
    cooked = run_recipe(appliance, RecipeStages(settings, tuning=tuning))
    embedded = settings.repository.startswith("file://") and not settings.catalogue.startswith(("http://", "https://"))
    summaries = (cooked.built.summary(), cooked.packaged.summary(), cooked.published.summary())
    return ReleaseResult(summaries, cooked.published, embedded)
