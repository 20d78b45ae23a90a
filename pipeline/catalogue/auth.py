"""Users, API tokens and VOs: who may act, and the admin use cases that manage them.

A token is ``vmi_<public id>_<secret>``: the public id finds the row, only the SHA-256 of the whole
token is stored (a high-entropy secret needs no slow KDF), it is shown once when issued, and it can
expire or be revoked. The prefix makes leaked tokens easy to spot for secret scanners.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from pipeline.catalogue import models as m
from pipeline.catalogue import views
from pipeline.catalogue.contract import NotAuthenticated, NotFound, PermissionDenied, VersionConflict, validated
from pipeline.catalogue.models import utcnow
from pipeline.catalogue.schemas import (
    Paged,
    TokenCreate,
    TokenIssued,
    TokenPublic,
    UserCreate,
    UserPublic,
    VoCreate,
    VoPublic,
)
from pipeline.catalogue.services import actor_user
from pipeline.catalogue.settings import DEFAULT_TOKEN_DAYS, LOCAL_ADMIN, MAX_TOKEN_DAYS
from pipeline.catalogue.uow import UnitOfWork

TOKEN_PREFIX = "vmi_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _require_admin(user: m.User) -> None:
    if user.role is not m.Role.ADMIN:
        raise PermissionDenied(f"{user.name} is not an admin")


def authenticate(uow: UnitOfWork, token: str) -> str:
    """The name of the user a token belongs to; ``NotAuthenticated`` for anything else."""
    parts = token.split("_", 2)
    if len(parts) != 3 or f"{parts[0]}_" != TOKEN_PREFIX:
        raise NotAuthenticated("malformed API token")
    with uow:
        row = uow.repo.token(parts[1])
        if row is None or not hmac.compare_digest(row.token_hash, hash_token(token)):
            raise NotAuthenticated("unknown API token")
        now = utcnow()
        if row.revoked is not None:
            raise NotAuthenticated("this API token was revoked")
        if row.expires <= now:
            raise NotAuthenticated(
                f"this API token expired on {row.expires:%Y-%m-%d %H:%M} UTC",
                hint="ask for a new one (POST /api/v1/users/<you>/tokens, or `invoke serve --create-token`)",
            )
        return row.user.name


def ensure_user(uow: UnitOfWork, name: str, email: str, role: m.Role) -> UserPublic:
    """Create a user if missing (bootstrap: the local admin, ``serve --create-token``)."""
    validated(UserCreate, {"name": name, "email": email, "role": role.value}, "user")
    with uow.writing():
        user = uow.repo.user(name)
        if user is None:
            user = m.User(name=name, email=email, role=role, created=utcnow())
            uow.repo.add(user)
            uow.repo.flush()
        view = views.user_view(user)
        uow.commit()
        return view


def ensure_local_admin(uow: UnitOfWork) -> str:
    ensure_user(uow, LOCAL_ADMIN, "root@localhost", m.Role.ADMIN)
    return LOCAL_ADMIN


def create_user(uow: UnitOfWork, actor: str, name: str, email: str, role: m.Role) -> UserPublic:
    validated(UserCreate, {"name": name, "email": email, "role": role.value}, "user")
    with uow.writing():
        _require_admin(actor_user(uow, actor))
        if uow.repo.user(name) is not None:
            raise VersionConflict(f"user {name!r} already exists")
        user = m.User(name=name, email=email, role=role, created=utcnow())
        uow.repo.add(user)
        uow.repo.flush()
        view = views.user_view(user)
        uow.commit()
        return view


def list_users(uow: UnitOfWork, actor: str, offset: int, limit: int) -> Paged[UserPublic]:
    with uow:
        _require_admin(actor_user(uow, actor))
        items = [views.user_view(u) for u in uow.repo.users(offset, limit)]
        return Paged[UserPublic](items=items, total=uow.repo.count_users(), offset=offset, limit=limit)


def whoami(uow: UnitOfWork, actor: str) -> UserPublic:
    with uow:
        return views.user_view(actor_user(uow, actor))


def _self_or_admin(uow: UnitOfWork, actor: str, user_name: str) -> m.User:
    user = actor_user(uow, actor)
    if user.name == user_name:
        return user
    _require_admin(user)
    target = uow.repo.user(user_name)
    if target is None:
        raise NotFound(f"user {user_name!r} does not exist")
    return target


def issue_token(
    uow: UnitOfWork,
    actor: str,
    user_name: str,
    label: str,
    days: int | None = None,
    default_days: int = DEFAULT_TOKEN_DAYS,
) -> TokenIssued:
    """A new token for ``user_name`` (oneself, or anyone for an admin); the secret is returned once.

    Every token expires: after ``days`` (at most ``MAX_TOKEN_DAYS``), else after ``default_days``.
    """
    validated(TokenCreate, {"label": label, "days": days}, "token")
    lifetime = timedelta(days=min(days or default_days, MAX_TOKEN_DAYS))
    with uow.writing():
        owner = _self_or_admin(uow, actor, user_name)
        public_id = secrets.token_hex(6)
        token = f"{TOKEN_PREFIX}{public_id}_{secrets.token_urlsafe(32)}"
        now = utcnow()
        row = m.ApiToken(
            public_id=public_id,
            token_hash=hash_token(token),
            user_id=owner.id,
            label=label,
            created=now,
            expires=now + lifetime,
            revoked=None,
        )
        row.user = owner
        uow.repo.add(row)
        uow.repo.flush()
        info = views.token_view(row)
        uow.commit()
        return TokenIssued(token=token, info=info)


def list_tokens(uow: UnitOfWork, actor: str, user_name: str) -> list[TokenPublic]:
    with uow:
        owner = _self_or_admin(uow, actor, user_name)
        return [views.token_view(t) for t in uow.repo.tokens_of(owner)]


def revoke_token(uow: UnitOfWork, actor: str, public_id: str) -> TokenPublic:
    """Revoke a token: its owner or an admin may; a revoked token stays listed, unusable."""
    with uow.writing():
        user = actor_user(uow, actor)
        row = uow.repo.token(public_id)
        if row is None or (row.user_id != user.id and user.role is not m.Role.ADMIN):
            raise NotFound(f"no token {public_id!r} of yours")  # 404, not 403: ids of others stay secret
        row.revoked = row.revoked or utcnow()
        view = views.token_view(row)
        uow.commit()
        return view


def create_vo(uow: UnitOfWork, actor: str, name: str, description: str) -> VoPublic:
    validated(VoCreate, {"name": name, "description": description}, "VO")
    with uow.writing():
        _require_admin(actor_user(uow, actor))
        if uow.repo.vo(name) is not None:
            raise VersionConflict(f"VO {name!r} already exists")
        vo = m.Vo(name=name, description=description, created=utcnow(), managers=[])
        uow.repo.add(vo)
        uow.repo.flush()
        view = views.vo_view(vo)
        uow.commit()
        return view


def set_vo_manager(uow: UnitOfWork, actor: str, vo_name: str, user_name: str, present: bool) -> VoPublic:
    with uow.writing():
        _require_admin(actor_user(uow, actor))
        vo = uow.repo.vo(vo_name)
        if vo is None:
            raise NotFound(f"VO {vo_name!r} is not in the catalogue")
        user = uow.repo.user(user_name)
        if user is None:
            raise NotFound(f"user {user_name!r} does not exist")
        rest = [u for u in vo.managers if u.id != user.id]
        vo.managers = [*rest, user] if present else rest
        uow.repo.flush()
        view = views.vo_view(vo)
        uow.commit()
        return view


def get_vo(uow: UnitOfWork, name: str) -> VoPublic:
    with uow:
        vo = uow.repo.vo(name)
        if vo is None:
            raise NotFound(f"VO {name!r} is not in the catalogue")
        return views.vo_view(vo)


def list_vos(uow: UnitOfWork, offset: int, limit: int) -> Paged[VoPublic]:
    with uow:
        items = [views.vo_view(v) for v in uow.repo.vos(offset, limit)]
        return Paged[VoPublic](items=items, total=uow.repo.count_vos(), offset=offset, limit=limit)
