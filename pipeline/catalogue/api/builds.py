"""What was built: a version's build manifest, package list, inputs digest and base version.

Read back by ``rebuild`` on runners that never saw the build (CI runners start empty): the catalogue,
not a runner's disk, is the record of what exists.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from pipeline.catalogue import services
from pipeline.catalogue.api.deps import UowDep
from pipeline.catalogue.schemas import BuildRecordPublic, Name

router = APIRouter(prefix="/appliances/{name}", tags=["versions"])
VersionStr = Annotated[str, Path(min_length=1, max_length=20)]


@router.get("/build")
def newest_build(name: Name, uow: UowDep) -> BuildRecordPublic:
    """The build of the newest version not archived (404 if the appliance has none)."""
    return services.build_record(uow, name)


@router.get("/versions/{version}/build")
def version_build(name: Name, version: VersionStr, uow: UowDep) -> BuildRecordPublic:
    """The build manifest, package list, inputs digest and base version of one version."""
    return services.build_record(uow, name, version)
