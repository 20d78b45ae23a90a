"""VOs, their managers (admins manage them) and the history of their signed image lists."""

from __future__ import annotations

from fastapi import APIRouter

from pipeline.catalogue import auth, endorsements
from pipeline.catalogue.api.deps import ActorDep, GuardedRoute, PagingDep, StateDep, UowDep
from pipeline.catalogue.schemas import ImageListPublic, Name, Paged, VoCreate, VoPublic

router = APIRouter(prefix="/vos", tags=["vos"], route_class=GuardedRoute)


@router.get("")
def list_vos(uow: UowDep, paging: PagingDep) -> Paged[VoPublic]:
    return auth.list_vos(uow, paging.offset, paging.limit)


@router.post("", status_code=201)
def create_vo(body: VoCreate, uow: UowDep, actor: ActorDep) -> VoPublic:
    return auth.create_vo(uow, actor, body.name, body.description)


@router.get("/{vo}")
def get_vo(vo: Name, uow: UowDep) -> VoPublic:
    return auth.get_vo(uow, vo)


@router.put("/{vo}/managers/{user}")
def add_manager(vo: Name, user: Name, uow: UowDep, actor: ActorDep) -> VoPublic:
    return auth.set_vo_manager(uow, actor, vo, user, present=True)


@router.delete("/{vo}/managers/{user}")
def remove_manager(vo: Name, user: Name, uow: UowDep, actor: ActorDep) -> VoPublic:
    return auth.set_vo_manager(uow, actor, vo, user, present=False)


@router.get("/{vo}/image-lists")
def image_list_history(vo: Name, uow: UowDep, state: StateDep) -> list[ImageListPublic]:
    """Signed list versions of the VO, newest first (the newest is served at /vo/<vo>/image.list)."""
    return [info for info, _ in endorsements.image_list_history(uow, vo, state.ctx)]
