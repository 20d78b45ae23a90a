"""Authorisation matrix: roles x endpoints x own/foreign objects (OWASP API1 BOLA, API5 function level).

Roles: anonymous; ``admin``; ``alice`` owns debian-12; ``max`` maintains debian-12; ``bob`` has no
rights; ``mia`` manages vo.example.org (not other.vo). ``centos-7`` is foreign to all but admin.
Every cell is one real HTTP request through the app; after each, the state is reset as admin.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.catalogue import auth, endorsements, services
from pipeline.catalogue.contract import ImagePayload, VersionPayload
from pipeline.catalogue.http_client import payload_json
from pipeline.catalogue.models import Role
from pipeline.catalogue.schemas import AuditIn
from tests.catalogue.conftest import PASSING_AUDIT, Api

ROLES = ("anonymous", "admin", "alice", "max", "bob", "mia")
VO = "vo.example.org"
_n = itertools.count()


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    allowed: dict[str, int]  # role -> expected success status; every other role gets `denied`
    body: Callable[[str], Any] | None = None
    reset: Callable[[Api], None] | None = None
    denied: int = 403
    extra: dict[str, int] = field(default_factory=dict)  # role -> a status other than `denied`


def _owned(code: int) -> dict[str, int]:
    return {"admin": code, "alice": code, "max": code}


def _version_body(make: Callable[..., ImagePayload], appliance: str) -> Callable[[str], Any]:
    def body(role: str) -> Any:
        version = f"9.{next(_n)}"
        return payload_json(
            VersionPayload(
                appliance=appliance, version=version, notes="matrix", images=(make(appliance, version, "qcow2"),)
            )
        )

    return body


def _endorsed(api: Api) -> None:
    endorsements.endorse(api.uow, "admin", "debian-12", "1.0", VO, _ctx(api))


def _ctx(api: Api) -> endorsements.Context:
    return api.client.app.state.catalogue.ctx  # type: ignore[no-any-return]


def _no_bob(api: Api) -> None:
    for appliance in ("debian-12", "centos-7"):
        services.set_maintainer(api.uow, "admin", appliance, "bob", present=False)
    auth.set_vo_manager(api.uow, "admin", VO, "bob", present=False)


def cases(make: Callable[..., ImagePayload]) -> list[Case]:
    appliance = {"title": "T", "description": "D", "vos": []}
    return [
        Case("update own appliance", "PUT", "/api/v1/appliances/debian-12", _owned(200), lambda r: appliance),
        Case("update foreign appliance", "PUT", "/api/v1/appliances/centos-7", {"admin": 200}, lambda r: appliance),
        Case(
            "register own version",
            "POST",
            "/api/v1/appliances/debian-12/versions",
            _owned(201),
            _version_body(make, "debian-12"),
        ),
        Case(
            "register foreign version",
            "POST",
            "/api/v1/appliances/centos-7/versions",
            {"admin": 201},
            _version_body(make, "centos-7"),
        ),
        Case(
            "store own audit",
            "PUT",
            "/api/v1/appliances/debian-12/versions/1.0/audit",
            {**_owned(200), "mia": 200},  # maintainers store their own; endorsers (VO managers) review any
            lambda r: PASSING_AUDIT,
        ),
        Case(
            "store foreign audit",
            "PUT",
            "/api/v1/appliances/centos-7/versions/1.0/audit",
            {"admin": 200, "mia": 200},
            lambda r: PASSING_AUDIT,
        ),
        Case(
            "add own maintainer",
            "PUT",
            "/api/v1/appliances/debian-12/maintainers/bob",
            {"admin": 204, "alice": 204},
            reset=_no_bob,
        ),
        Case(
            "add foreign maintainer",
            "PUT",
            "/api/v1/appliances/centos-7/maintainers/bob",
            {"admin": 204},
            reset=_no_bob,
        ),
        Case(
            "endorse for managed VO",
            "POST",
            "/api/v1/appliances/debian-12/versions/1.0/endorsements",
            {"admin": 200, "mia": 200},
            lambda r: {"vo": VO},
        ),
        Case(
            "endorse for other VO",
            "POST",
            "/api/v1/appliances/debian-12/versions/1.0/endorsements",
            {"admin": 200},
            lambda r: {"vo": "other.vo"},
        ),
        Case(
            "revoke for managed VO",
            "DELETE",
            f"/api/v1/appliances/debian-12/versions/1.0/endorsements/{VO}",
            {"admin": 200, "mia": 200},
            reset=_endorsed,
        ),
        Case(
            "cascade revoke for managed VO",  # nothing layered on 1.0: managing this VO is enough
            "POST",
            f"/api/v1/appliances/debian-12/versions/1.0/endorsements/{VO}/cascade-revoke",
            {"admin": 200, "mia": 200},
            reset=_endorsed,
        ),
        Case("archive own version", "POST", "/api/v1/appliances/debian-12/versions/2.0/archive", _owned(200)),
        Case("archive foreign version", "POST", "/api/v1/appliances/centos-7/versions/1.0/archive", {"admin": 200}),
        Case("create VO", "POST", "/api/v1/vos", {"admin": 201}, lambda r: {"name": f"vo{next(_n)}.example.org"}),
        Case("add VO manager", "PUT", f"/api/v1/vos/{VO}/managers/bob", {"admin": 200}, reset=_no_bob),
        Case(
            "create user",
            "POST",
            "/api/v1/users",
            {"admin": 201},
            lambda r: {"name": f"u{next(_n)}", "email": "u@x.org"},
        ),
        Case("list users", "GET", "/api/v1/users", {"admin": 200}),
        Case("token for bob", "POST", "/api/v1/users/bob/tokens", {"admin": 201, "bob": 201}, lambda r: {"label": "t"}),
        Case("list alice's tokens", "GET", "/api/v1/users/alice/tokens", {"admin": 200, "alice": 200}),
        Case("whoami", "GET", "/api/v1/users/me", {r: 200 for r in ROLES[1:]}),
        *(
            Case(f"public read {p}", "GET", p, {r: 200 for r in ROLES}, denied=0)
            for p in (
                "/api/v1/appliances",
                "/api/v1/appliances/centos-7",
                "/api/v1/appliances/debian-12/versions/1.0",
                "/api/v1/images",
                "/api/v1/vos",
                f"/vo/{VO}/image.list",
                "/",
                "/appliances/debian-12/1.0",
            )
        ),
    ]


def test_authorisation_matrix(signing_api: Api, publish_file: Callable[..., ImagePayload]) -> None:
    api = signing_api
    auth.ensure_user(api.uow, "max", "max@example.org", Role.USER)
    api.tokens["max"] = auth.issue_token(api.uow, "max", "max", "tests").token
    services.set_maintainer(api.uow, "alice", "debian-12", "max", present=True)
    for appliance, owner in (("debian-12", "alice"), ("centos-7", "admin")):
        for version in ("1.0", "2.0"):
            payload = VersionPayload(
                appliance=appliance, version=version, notes="v", images=(publish_file(appliance, version, "ova"),)
            )
            services.register_version(api.uow, owner, payload, api.settings)
            services.store_audit(
                api.uow, "admin", appliance, version, AuditIn.model_validate(PASSING_AUDIT)
            )  # counts for endorsement
    _endorsed(api)

    wrong = []
    for case in cases(publish_file):
        for role in ROLES:
            expected = case.allowed.get(role) or (401 if role == "anonymous" else case.denied)
            body = case.body(role) if case.body else None
            headers = api.headers(None if role == "anonymous" else role)
            r = api.client.request(case.method, case.path, json=body, headers=headers)
            if r.status_code != expected:
                wrong.append(f"{case.name} as {role}: {r.status_code} (expected {expected}) {r.text[:120]}")
            if case.reset:
                case.reset(api)
    assert wrong == []
