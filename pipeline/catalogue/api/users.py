"""Users (admins manage them) and API tokens (shown once, stored hashed, revocable)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from pipeline.catalogue import auth
from pipeline.catalogue.api.deps import ActorDep, GuardedRoute, PagingDep, StateDep, UowDep
from pipeline.catalogue.models import Role
from pipeline.catalogue.schemas import Name, Paged, TokenCreate, TokenIssued, TokenPublic, UserCreate, UserPublic

router = APIRouter(tags=["users"], route_class=GuardedRoute)
TokenId = Annotated[str, Path(pattern=r"^[0-9a-f]{12}$")]


@router.get("/users")
def list_users(uow: UowDep, actor: ActorDep, paging: PagingDep) -> Paged[UserPublic]:
    return auth.list_users(uow, actor, paging.offset, paging.limit)


@router.post("/users", status_code=201)
def create_user(body: UserCreate, uow: UowDep, actor: ActorDep) -> UserPublic:
    return auth.create_user(uow, actor, body.name, body.email, Role(body.role))


@router.get("/users/me")
def whoami(uow: UowDep, actor: ActorDep) -> UserPublic:
    return auth.whoami(uow, actor)


@router.post("/users/{user}/tokens", status_code=201)
def issue_token(user: Name, body: TokenCreate, uow: UowDep, actor: ActorDep, state: StateDep) -> TokenIssued:
    """A new token for yourself (or anyone, for an admin). The secret is in this response only; every
    token expires (``days``, default 90, at most 366) and ``info.expires`` says when."""
    return auth.issue_token(uow, actor, user, body.label, body.days, state.settings.token_days)


@router.get("/users/{user}/tokens")
def list_tokens(user: Name, uow: UowDep, actor: ActorDep) -> list[TokenPublic]:
    return auth.list_tokens(uow, actor, user)


@router.delete("/tokens/{token_id}")
def revoke_token(token_id: TokenId, uow: UowDep, actor: ActorDep) -> TokenPublic:
    return auth.revoke_token(uow, actor, token_id)
