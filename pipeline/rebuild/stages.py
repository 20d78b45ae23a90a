"""The recipe's stages as the rebuild runs them: always a fresh build, and a publish that knows when
another runner won the race for the same version."""

from __future__ import annotations

from pipeline.catalogue.client import Catalogue, open_catalogue
from pipeline.catalogue.contract import VersionConflict
from pipeline.errors import UploadError
from pipeline.package import PackageResult
from pipeline.publish import PublishResult, plan_publish
from pipeline.rebuild.execute import LostRace
from pipeline.recipe import RecipeStages
from pipeline.repository import open_repository
from pipeline.settings import Settings


class PipelineStages(RecipeStages):
    """build -> package -> audit -> publish -> endorse through the recipe's real stages."""

    def __init__(self, settings: Settings) -> None:
        # force: a rebuild for newer packages or age has unchanged inputs, which the cache would skip
        super().__init__(settings, force=True)

    def publish(self, packaged: PackageResult) -> PublishResult:
        """The race checks, the registration and the audit's storage on one open catalogue."""
        appliance, version = packaged.appliance, packaged.version
        catalogue = open_catalogue(self.settings)
        try:
            if self._published_by_another(catalogue, packaged):
                raise LostRace(f"{appliance} {version} is in the catalogue already; nothing uploaded")
            try:
                return self.publish_with(packaged, catalogue)
            except (VersionConflict, UploadError) as e:
                # two runners decided at once and chose the same version: the first object uploaded, and
                # the catalogue's registration, each let exactly one of them through
                if self._published_by_another(catalogue, packaged, uploads_too=True):
                    raise LostRace(f"{appliance} {version} was published by another run first ({e.message})") from e
                raise
        finally:
            catalogue.close()

    def _published_by_another(self, catalogue: Catalogue, packaged: PackageResult, uploads_too: bool = False) -> bool:
        """The catalogue holds the version (or, ``uploads_too``, the repository holds other bytes under
        its keys) and it is not this build: ours is ``output/`` and was never registered."""
        registered = catalogue.get_version(packaged.appliance, packaged.version)
        if registered is not None:  # ours if it lists our images (a publish run again after a failure)
            ours = {a.sha512 for a in packaged.manifest.artifacts} if packaged.manifest else set()
            return not any(i.sha512 in ours for i in registered.images)
        if not uploads_too:
            return False
        repository = open_repository(self.settings)
        plan = plan_publish(packaged, repository)
        return any(repository.exists(u.key) and repository.verify(u.key, u.digests) for u in plan.uploads)
