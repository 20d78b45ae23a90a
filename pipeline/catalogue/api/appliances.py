"""Appliances and their maintainers."""

from __future__ import annotations

from fastapi import APIRouter, Response

from pipeline.catalogue import services
from pipeline.catalogue.api.deps import ActorDep, GuardedRoute, PagingDep, UowDep
from pipeline.catalogue.schemas import ApplianceIn, AppliancePublic, ApplianceRecord, Name, Paged

router = APIRouter(prefix="/appliances", tags=["appliances"], route_class=GuardedRoute)


@router.get("")
def list_appliances(uow: UowDep, paging: PagingDep) -> Paged[AppliancePublic]:
    return services.list_appliances(uow, paging.offset, paging.limit)


@router.get("/{name}")
def get_appliance(name: Name, uow: UowDep) -> AppliancePublic:
    return services.get_appliance(uow, name)


@router.put("/{name}")
def put_appliance(name: Name, body: ApplianceIn, uow: UowDep, actor: ActorDep) -> AppliancePublic:
    """Create the appliance (you become its owner) or update it (owner, maintainers, admins)."""
    return services.ensure_appliance(uow, actor, ApplianceRecord(name=name, **body.model_dump()))


@router.put("/{name}/maintainers/{user}", status_code=204)
def add_maintainer(name: Name, user: Name, uow: UowDep, actor: ActorDep) -> Response:
    services.set_maintainer(uow, actor, name, user, present=True)
    return Response(status_code=204)


@router.delete("/{name}/maintainers/{user}", status_code=204)
def remove_maintainer(name: Name, user: Name, uow: UowDep, actor: ActorDep) -> Response:
    services.set_maintainer(uow, actor, name, user, present=False)
    return Response(status_code=204)
