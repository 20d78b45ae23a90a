"""The other stages as the rebuild drives them: the library functions ``tasks.py`` calls, nothing else."""

from __future__ import annotations

from pipeline.audit.report import AuditReport, audit_version, store_if_registered
from pipeline.builder import build_appliance
from pipeline.catalogue.client import open_catalogue
from pipeline.catalogue.contract import VersionConflict
from pipeline.endorse import endorse_version
from pipeline.errors import UploadError
from pipeline.manifest import BuildManifest
from pipeline.package import package_appliance
from pipeline.publish import plan_publish, publish_version
from pipeline.rebuild.execute import AuditOutcome, LostRace
from pipeline.repository import open_repository
from pipeline.settings import Settings


class PipelineStages:
    """build -> package -> audit -> publish -> endorse through the stages' own entry points."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._audits: dict[tuple[str, str], AuditReport] = {}

    def build(self, appliance: str, version: str | None = None) -> str:
        # force: a rebuild for newer packages or age has unchanged inputs, which the cache would skip
        return build_appliance(self.settings, appliance, version, force=True).version

    def package(self, appliance: str, version: str) -> None:
        package_appliance(self.settings, appliance, version=version)

    def audit(self, appliance: str, version: str) -> AuditOutcome:
        report = audit_version(self.settings, appliance, version=version)
        self._audits[appliance, version] = report
        if report.passed:
            return AuditOutcome(True, f"{len(report.checks)} checks passed")
        return AuditOutcome(False, "failed: " + ", ".join(c.id for c in report.failures))

    def publish(self, appliance: str, version: str) -> None:
        if self._published_by_another(appliance, version):
            raise LostRace(f"{appliance} {version} is in the catalogue already; nothing uploaded")
        try:
            publish_version(self.settings, appliance, version=version)
        except (VersionConflict, UploadError) as e:
            # two runners decided at once and chose the same version: the first object uploaded, and
            # the catalogue's registration, each let exactly one of them through
            if self._published_by_another(appliance, version, uploads_too=True):
                raise LostRace(f"{appliance} {version} was published by another run first ({e.message})") from e
            raise
        report = self._audits.pop((appliance, version), None)
        if report is not None:  # audited before it was registered: store the report with it now
            store_if_registered(self.settings, report)

    def _published_by_another(self, appliance: str, version: str, uploads_too: bool = False) -> bool:
        """The catalogue holds ``version`` (or, ``uploads_too``, the repository holds other bytes under
        its keys) and it is not this build: ours is ``output/`` and was never registered."""
        catalogue = open_catalogue(self.settings)
        try:
            registered = catalogue.get_version(appliance, version)
        finally:
            catalogue.close()
        if registered is not None:  # ours if it lists our images (a publish run again after a failure)
            ours = {a.sha512 for a in BuildManifest.load(self.settings.version_dir(appliance, version)).artifacts}
            return not any(i.sha512 in ours for i in registered.images)
        if not uploads_too:
            return False
        repository = open_repository(self.settings)
        plan = plan_publish(self.settings, appliance, version, repository)
        return any(repository.exists(u.key) and repository.verify(u.key, u.digests) for u in plan.uploads)

    def endorse(self, appliance: str, version: str, vo: str) -> None:
        endorse_version(self.settings, appliance, version, vo)
