"""The other stages as the rebuild drives them: the library functions ``tasks.py`` calls, nothing else."""

from __future__ import annotations

from pipeline.build import build_appliance
from pipeline.endorse import endorse_version
from pipeline.endorse.audit import AuditReport, audit_version, store_if_registered
from pipeline.package import package_appliance
from pipeline.publish import publish_version
from pipeline.rebuild.execute import AuditOutcome
from pipeline.settings import Settings


class PipelineStages:
    """build -> package -> audit -> publish -> endorse through the stages' own entry points."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._audits: dict[tuple[str, str], AuditReport] = {}

    def build(self, appliance: str) -> str:
        # force: a rebuild for newer packages or age has unchanged inputs, which the cache would skip
        return build_appliance(self.settings, appliance, force=True).version

    def package(self, appliance: str, version: str) -> None:
        package_appliance(self.settings, appliance, version=version)

    def audit(self, appliance: str, version: str) -> AuditOutcome:
        report = audit_version(self.settings, appliance, version=version)
        self._audits[appliance, version] = report
        if report.passed:
            return AuditOutcome(True, f"{len(report.checks)} checks passed")
        return AuditOutcome(False, "failed: " + ", ".join(c.id for c in report.failures))

    def publish(self, appliance: str, version: str) -> None:
        publish_version(self.settings, appliance, version=version)
        report = self._audits.pop((appliance, version), None)
        if report is not None:  # audited before it was registered: store the report with it now
            store_if_registered(self.settings, report)

    def endorse(self, appliance: str, version: str, vo: str) -> None:
        endorse_version(self.settings, appliance, version, vo)
