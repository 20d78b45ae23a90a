"""The REST API: tokens, mass assignment, error mapping, limits, the file repository."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, text

from pipeline.catalogue.contract import VersionPayload
from pipeline.catalogue.http_client import payload_json
from pipeline.catalogue.models import ApiToken
from tests.catalogue.conftest import Api

V = "/api/v1/appliances/debian-12/versions"


def test_register_and_read_back(api: Api, version_payload: Callable[..., VersionPayload]) -> None:
    body = payload_json(version_payload())
    r = api.client.post(V, json=body, headers=api.headers("alice"))
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["images"][0]["integrity"] == "verified"
    again = api.client.post(V, json=body, headers=api.headers("alice"))
    assert again.status_code == 201 and again.json() == created  # idempotent
    body["notes"] = "something else"
    conflict = api.client.post(V, json=body, headers=api.headers("alice"))
    assert conflict.status_code == 409 and conflict.json()["error"] == "VersionConflict"
    listed = api.client.get(V).json()
    assert listed["total"] == 1 and listed["items"][0]["version"] == "2026.11.22"
    images = api.client.get("/api/v1/images").json()
    assert {i["format"] for i in images["items"]} == {"ova", "qcow2"}


@pytest.mark.parametrize("field", ["integrity", "identifier", "owner", "endorsements", "created"])
def test_server_controlled_fields_cannot_be_set(
    api: Api, version_payload: Callable[..., VersionPayload], field: str
) -> None:
    body = payload_json(version_payload())
    body["images"][0][field] = "verified"
    body[field] = "x"
    r = api.client.post(V, json=body, headers=api.headers("alice"))
    assert r.status_code == 422
    assert any(field in str(d["loc"]) and d["type"] == "extra_forbidden" for d in r.json()["detail"])
    assert api.client.get(V).json()["total"] == 0


def test_owner_is_the_caller_not_the_body(api: Api) -> None:
    body = {"title": "Mine", "description": "by bob", "vos": [], "owner": "alice"}
    assert api.client.put("/api/v1/appliances/bobs", json=body, headers=api.headers("bob")).status_code == 422
    del body["owner"]
    r = api.client.put("/api/v1/appliances/bobs", json=body, headers=api.headers("bob"))
    assert r.status_code == 200 and r.json()["owner"] == "bob"


def test_domain_validation_is_a_422_naming_the_field(api: Api, version_payload: Callable[..., VersionPayload]) -> None:
    body = payload_json(version_payload())
    body["images"].append(dict(body["images"][0]))
    r = api.client.post(V, json=body, headers=api.headers("alice"))
    assert r.status_code == 422
    assert "images.2.uri" in r.json()["detail"][0]["msg"] and "appears twice" in r.json()["detail"][0]["msg"]


def test_tokens_are_stored_hashed_shown_once_and_revocable(api: Api) -> None:
    r = api.client.post("/api/v1/users/bob/tokens", json={"label": "ci"}, headers=api.headers("bob"))
    assert r.status_code == 201
    token, public_id = r.json()["token"], r.json()["info"]["id"]
    assert token.startswith(f"vmi_{public_id}_")
    assert api.client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"}).json()["name"] == "bob"
    listed = api.client.get("/api/v1/users/bob/tokens", headers=api.headers("bob")).json()
    assert all("token" not in t and "hash" not in str(t) for t in listed)
    # nothing in the database can be used as a token
    engine = create_engine(api.settings.database_url)
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT public_id, token_hash FROM {ApiToken.__tablename__}")).all()
    engine.dispose()
    assert rows and all(token not in (r[0], r[1]) and len(r[1]) == 64 for r in rows)
    # someone else cannot revoke it, and cannot learn that it exists
    assert api.client.delete(f"/api/v1/tokens/{public_id}", headers=api.headers("alice")).status_code == 404
    assert api.client.delete(f"/api/v1/tokens/{public_id}", headers=api.headers("bob")).json()["revoked"]
    r = api.client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert r.headers["www-authenticate"] == "Bearer"


def test_expired_and_forged_tokens_are_refused(api: Api) -> None:
    from pipeline.catalogue import auth

    issued = auth.issue_token(api.uow, "bob", "bob", "short", days=1)
    engine = create_engine(api.settings.database_url)
    with engine.begin() as conn:
        past = (datetime.now(UTC) - timedelta(days=2)).replace(tzinfo=None)
        conn.execute(text("UPDATE api_tokens SET expires = :p WHERE public_id = :i"), {"p": past, "i": issued.info.id})
    engine.dispose()
    r = api.client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {issued.token}"})
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    forged = issued.token[:-4] + "AAAA"
    assert api.client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    assert api.client.get("/api/v1/users/me", headers={"Authorization": "Bearer nonsense"}).status_code == 401
    assert api.client.get("/api/v1/users/me").status_code == 401


def test_repository_downloads_are_read_only_and_confined(
    api: Api, version_payload: Callable[..., VersionPayload]
) -> None:
    payload = version_payload()
    key = payload.images[0].uri.split("/repo/", 1)[1]
    r = api.client.get(f"/repo/{key}")
    assert r.status_code == 200 and r.content == (api.settings.repository_root / key).read_bytes()  # type: ignore[operator]
    secret = api.settings.repository_root.parent / "secret.txt"  # type: ignore[union-attr]
    secret.write_text("outside")
    (api.settings.repository_root / "link").symlink_to(secret)  # type: ignore[operator]
    for bad in ("../secret.txt", "%2e%2e/secret.txt", "link", "debian-12", ""):
        assert api.client.get(f"/repo/{bad}").status_code == 404, bad
    head = api.client.head(f"/repo/{key}")
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(r.content) and head.content == b""
    assert api.client.put(f"/repo/{key}", content=b"x").status_code == 405
    assert api.client.delete(f"/repo/{key}").status_code == 405


def test_oversized_bodies_and_pages_are_refused(api: Api) -> None:
    big = b"{" + b" " * (api.settings.max_body_bytes + 1) + b"}"
    r = api.client.post(V, content=big, headers={**api.headers("alice"), "Content-Type": "application/json"})
    assert r.status_code == 413
    assert api.client.get("/api/v1/images?limit=100000").status_code == 422

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit still holds
        for _ in range(api.settings.max_body_bytes // 65536 + 2):
            yield b" " * 65536

    r = api.client.post(V, content=chunks(), headers={**api.headers("alice"), "Content-Type": "application/json"})
    assert r.status_code == 413
    small = api.client.post(
        V, content=iter([b"{", b"}"]), headers={**api.headers("alice"), "Content-Type": "application/json"}
    )
    assert small.status_code == 422  # a small chunked body reaches the app intact


def test_undeclared_routes_are_404_and_openapi_lists_the_api(api: Api) -> None:
    spec = api.client.get("/api/v1/openapi.json").json()
    assert "/api/v1/appliances/{name}/versions" in spec["paths"]
    assert "/vo/{vo}/image.list" in spec["paths"]
    assert api.client.get("/api/v0/appliances").status_code == 404
    assert api.client.get("/admin").status_code == 404


def test_pages_answer_404_in_html(api: Api) -> None:
    r = api.client.get("/appliances/nope")
    assert r.status_code == 404 and "text/html" in r.headers["content-type"] and "nope" in r.text
