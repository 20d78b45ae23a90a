"""Dependencies injected into routes: the unit of work, the acting user, paging."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Query, Request, Response
from fastapi.routing import APIRoute
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


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text, without parsing it (no recursion).

    Strings are removed first (the unrolled JSON string pattern is linear), then only brackets are
    kept and counted. Invalid JSON may be miscounted; the parser refuses it afterwards anyway.
    """
    structure = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for c in structure:
        if c in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class GuardedRequest(Request):
    """A request whose JSON body is refused (400, one line) when nested deeper than the limit,
    before ``json.loads`` could recurse into it."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            limit: int = self.app.state.catalogue.settings.max_json_depth
            if json_depth(body) > limit:
                raise HTTPException(400, f"request body: JSON nested deeper than {limit} levels")
            self._json = json.loads(body)
        return self._json


class GuardedRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            return await handler(GuardedRequest(request.scope, request.receive))

        return guarded
