"""Dependencies injected into routes: the unit of work, the acting user, paging."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from pipeline.catalogue import auth, endorsements
from pipeline.catalogue.contract import NotAuthenticated
from pipeline.catalogue.settings import CatalogueSettings
from pipeline.catalogue.uow import UnitOfWork


@dataclass(frozen=True)
class AppState:
    """What ``create_app`` builds once and every request shares."""

    settings: CatalogueSettings
    sessions: sessionmaker[Session]
    ctx: endorsements.Context


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.catalogue
    return state


def get_uow(state: Annotated[AppState, Depends(get_state)]) -> UnitOfWork:
    return UnitOfWork(state.sessions)


bearer = HTTPBearer(auto_error=False, description="an API token: `Authorization: Bearer vmi_...`")

StateDep = Annotated[AppState, Depends(get_state)]
UowDep = Annotated[UnitOfWork, Depends(get_uow)]


def get_actor(uow: UowDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
    if credentials is None:
        raise NotAuthenticated("this needs an API token (Authorization: Bearer vmi_...)")
    return auth.authenticate(uow, credentials.credentials)


ActorDep = Annotated[str, Depends(get_actor)]


@dataclass(frozen=True)
class Paging:
    offset: int
    limit: int


def get_paging(
    state: StateDep,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Paging:
    return Paging(offset, min(limit, state.settings.max_page))


PagingDep = Annotated[Paging, Depends(get_paging)]
