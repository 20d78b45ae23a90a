"""Every registered image (what `invoke audit` re-checks against the repository)."""

from __future__ import annotations

from fastapi import APIRouter

from pipeline.catalogue import services
from pipeline.catalogue.api.deps import GuardedRoute, PagingDep, UowDep
from pipeline.catalogue.schemas import ImagePublic, Paged

router = APIRouter(prefix="/images", tags=["images"], route_class=GuardedRoute)


@router.get("")
def list_images(uow: UowDep, paging: PagingDep) -> Paged[ImagePublic]:
    return services.list_images(uow, paging.offset, paging.limit)
