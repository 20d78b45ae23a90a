"""Issue 14, sections 4 and 7: what the catalogue registers, whose audit gates endorsement, strict
fields, no 500 on hostile input, security headers and expiring tokens.

Every case is a real request through the app (or a real use case call) on a real database; each
asserts the exact reason a client is given.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from pipeline.catalogue import auth, endorsements, services
from pipeline.catalogue.contract import Integrity, InvalidPayload, NotEndorsable, VersionPayload, validated
from pipeline.catalogue.http_client import payload_json
from pipeline.catalogue.models import Role
from pipeline.catalogue.schemas import AuditIn
from pipeline.catalogue.settings import CatalogueSettings, catalogue_settings
from pipeline.errors import ConfigError
from pipeline.settings import load_settings
from tests.catalogue.conftest import PASSING_AUDIT, PUBLIC, Api
from tests.test_settings_and_run import BASE

V = "/api/v1/appliances/debian-12/versions"
VO = "vo.example.org"


def _one(payload: VersionPayload, **changes: Any) -> VersionPayload:
    return payload.model_copy(update={"images": [payload.images[0].model_copy(update=changes)]})


# --- section 4: which image URLs are registered --------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("file:///etc/passwd", "is not under the repository's public URL http://127.0.0.1:8080/repo/"),
        ("file:///tmp/repository/debian-12/x.qcow2", "is not under the repository's public URL"),
        ("http://127.0.0.1:8080/other/x.qcow2", "is not under the repository's public URL"),
        ("http://127.0.0.1:8080/repository/x.qcow2", "is not under the repository's public URL"),  # prefix, not path
        ("http://10.0.0.7/repo/x.qcow2", "is not under the repository's public URL"),
        ("https://mirror.example.org/debian-12/x.qcow2", "is not under the repository's public URL"),
        ("http://admin:secret@127.0.0.1:8080/repo/x.qcow2", "images.0.uri: must not carry credentials (user@host)"),
        ("http://127.0.0.1:8080/repo/%2e%2e/x", "images.0.uri: must not have . or .. path segments"),
        ("http://127.0.0.1:8080/repo/x?y=1", "images.0.uri: must not have a query, a fragment"),
        ("ftp://127.0.0.1:8080/repo/x", "images.0.uri: must be an http:// or https:// URL"),
        ("gopher://127.0.0.1/x", "images.0.uri: must be an http:// or https:// URL"),
        ("http:///repo/x", "images.0.uri: must name a host"),
        ("http://127.0.0.1:99999/repo/x", "images.0.uri: bad port"),
    ],
)
def test_only_urls_under_the_public_base_are_registered(
    cat_settings: CatalogueSettings, version_payload: Callable[..., VersionPayload], uri: str, reason: str
) -> None:
    from pipeline.catalogue.inprocess import InProcessCatalogue
    from tests.catalogue.conftest import APPLIANCE

    cat = InProcessCatalogue(cat_settings)
    try:
        cat.ensure_appliance(APPLIANCE)
        with pytest.raises(InvalidPayload) as caught:
            cat.register_version(_one(version_payload(), uri=uri))
        assert reason in caught.value.message
        assert cat.list_versions("debian-12") == []
    finally:
        cat.close()


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1", "not a public address"),
        ("127.1", "not a public address"),  # resolvers read the legacy forms too
        ("2130706433", "not a public address"),
        ("0x7f.1", "not a public address"),
        ("10.1.2.3", "not a public address"),
        ("192.168.0.1", "not a public address"),
        ("172.16.5.4", "not a public address"),
        ("169.254.169.254", "not a public address"),  # cloud metadata
        ("100.64.0.1", "not a public address"),
        ("0.0.0.0", "not a public address"),
        ("::1", "not a public address"),
        ("fe80::1%eth0", "not a public address"),
        ("fd00::1", "not a public address"),
        ("::ffff:127.0.0.1", "not a public address"),
        ("localhost", "not a public DNS name"),
        ("db.localhost", "not a public DNS name"),
        ("printer.local", "not a public DNS name"),
        ("metadata", "not a public DNS name"),
        ("metadata.google.internal", "not a public DNS name"),
    ],
)
def test_without_a_public_base_only_public_hosts(host: str, reason: str) -> None:
    problem = services.host_problem(host)
    assert problem is not None and reason in problem
    settings = CatalogueSettings("sqlite://", PUBLIC, None, None)
    netloc = f"[{host}]" if ":" in host else host
    assert services.image_uri_problem(settings, f"http://{netloc}/x.qcow2") == problem


@pytest.mark.parametrize("host", ["downloads.example.org", "93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"])
def test_public_hosts_pass_without_a_base(host: str) -> None:
    settings = CatalogueSettings("sqlite://", PUBLIC, None, None)
    netloc = f"[{host}]" if ":" in host else host
    assert services.image_uri_problem(settings, f"https://{netloc}/x.qcow2") is None
    assert services.image_uri_problem(settings, f"file:///{host}/x") == "must be an http:// or https:// URL"


def test_an_s3_repository_still_confines_registration_to_its_public_base(tmp_path: Any) -> None:
    config = {**BASE, "repository": "s3://bucket/vmi", "repository_public_url": "https://objects.example.org/vmi/"}
    settings = load_settings(config, tmp_path, environ={})
    cat = catalogue_settings(settings, {})
    assert cat.repository_root is None and cat.repository_public_url == "https://objects.example.org/vmi"
    assert services.image_uri_problem(cat, "https://objects.example.org/vmi/debian-12/1/x.qcow2") is None
    problem = services.image_uri_problem(cat, "https://objects.example.org/other/x.qcow2")
    base = "https://objects.example.org/vmi/"
    assert problem == f"is not under the repository's public URL {base} (only published files are registered)"


def test_files_under_the_base_are_hashed_by_the_server(
    api: Api, version_payload: Callable[..., VersionPayload]
) -> None:
    r = api.client.post(V, json=payload_json(version_payload()), headers=api.headers("alice"))
    assert r.status_code == 201 and {i["integrity"] for i in r.json()["images"]} == {Integrity.VERIFIED.value}


# --- section 4: whose audit gates endorsement ----------------------------------------------------


def test_a_maintainers_own_audit_never_gates_endorsement(
    signing_api: Api, version_payload: Callable[..., VersionPayload]
) -> None:
    api = signing_api
    ctx = api.client.app.state.catalogue.ctx
    services.register_version(api.uow, "alice", version_payload(version="1.0"), api.settings)
    # alice (owner) stores a passing audit of her own version: kept, shown, but it does not count
    r = api.client.put(f"{V}/1.0/audit", json=PASSING_AUDIT, headers=api.headers("alice"))
    assert r.status_code == 200 and r.json()["stored_by"] == "alice" and r.json()["stored_as"] == "maintainer"
    assert api.client.get(f"{V}/1.0").json()["audit_passed"] is None
    r = api.client.post(f"{V}/1.0/endorsements", json={"vo": VO}, headers=api.headers("mia"))
    assert r.status_code == 409
    assert r.json()["detail"] == f"debian-12 1.0 has no policy audit stored by an admin or a manager of VO {VO}"

    # a manager of another VO is an endorser, but not for this VO
    auth.ensure_user(api.uow, "otto", "otto@example.org", Role.USER)
    auth.set_vo_manager(api.uow, "admin", "other.vo", "otto", present=True)
    assert (
        services.store_audit(api.uow, "otto", "debian-12", "1.0", AuditIn.model_validate(PASSING_AUDIT)).stored_as
        == "endorser"
    )
    with pytest.raises(NotEndorsable, match=f"no policy audit stored by an admin or a manager of VO {VO}"):
        endorsements.endorse(api.uow, "mia", "debian-12", "1.0", VO, ctx)

    # a failing audit by the VO's own manager blocks; her passing one (or an admin's) gates it
    failing = {"checks": [{"id": "root-locked", "result": "fail", "evidence": "root:$6$"}]}
    assert api.client.put(f"{V}/1.0/audit", json=failing, headers=api.headers("mia")).json()["stored_as"] == "endorser"
    r = api.client.post(f"{V}/1.0/endorsements", json={"vo": VO}, headers=api.headers("mia"))
    assert r.status_code == 409 and r.json()["detail"] == "debian-12 1.0 fails the policy audit: root-locked"
    assert api.client.put(f"{V}/1.0/audit", json=PASSING_AUDIT, headers=api.headers("mia")).status_code == 200
    r = api.client.post(f"{V}/1.0/endorsements", json={"vo": VO}, headers=api.headers("mia"))
    assert r.status_code == 200, r.text
    shown = api.client.get(f"{V}/1.0/audit").json()
    assert (shown["stored_by"], shown["stored_as"], shown["passed"]) == ("mia", "endorser", True)

    # an admin's audit counts for any VO; bob (no role at all) may not store one
    services.register_version(api.uow, "alice", version_payload(version="2.0"), api.settings)
    services.store_audit(api.uow, "admin", "debian-12", "2.0", AuditIn.model_validate(PASSING_AUDIT))
    endorsements.endorse(api.uow, "mia", "debian-12", "2.0", VO, ctx)
    r = api.client.put(f"{V}/2.0/audit", json=PASSING_AUDIT, headers=api.headers("bob"))
    assert r.status_code == 403
    assert r.json()["detail"] == "bob is not a maintainer of appliance debian-12, a VO manager or an admin"


# --- section 4: strict field checks --------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: _one(p, sha512="A" * 128), r"images.0.sha512: must match ^[0-9a-f]{128}$"),
        (lambda p: _one(p, sha512="a" * 127), r"images.0.sha512: must match ^[0-9a-f]{128}$"),
        (lambda p: _one(p, sha256="0" * 63), r"images.0.sha256: must match ^[0-9a-f]{64}$"),
        (lambda p: _one(p, size=0), "images.0.size: Input should be greater than 0"),
        (lambda p: _one(p, size=2**64), "images.0.size: Input should be less than 4611686018427387904"),
        (lambda p: _one(p, min_cores=2**40), "images.0.min_cores: Input should be less than or equal to 2147483647"),
        (
            lambda p: _one(p, title="Debian\x1b[31m"),
            "images.0.title: must be one line of text without control characters",
        ),
        (lambda p: _one(p, title="two\nlines"), "images.0.title: must be one line of text without control characters"),
        (lambda p: _one(p, os_name="Deb\x00ian"), "images.0.os_name: must be one line of text without control"),
        (lambda p: _one(p, os_version="12\u0085"), "images.0.os_version: must be one line of text"),
        (
            lambda p: p.model_copy(update={"notes": "bell\x07"}),
            "notes: must be text without control characters (tab and newline allowed)",
        ),
        (lambda p: p.model_copy(update={"notes": "x\ud800"}), "notes: must be valid Unicode text (no lone surrogates)"),
        (lambda p: _one(p, manifest={"a": {"b": "\x1b"}}), "images.0.manifest: a.b: must be text without control"),
        (
            lambda p: _one(p, manifest={"k": "\udfff"}),
            "images.0.manifest: k: must be valid Unicode text (no lone surrogates)",
        ),
        (lambda p: _one(p, manifest={"n": 2**70}), "images.0.manifest: n: integer beyond 64 bits"),
        (
            lambda p: p.model_copy(update={"expires": datetime(2030, 1, 1)}),  # noqa: DTZ001 (the point: no zone)
            "expires: Input should have timezone info",
        ),
    ],
)
def test_strict_fields_name_the_field(
    api: Api,
    version_payload: Callable[..., VersionPayload],
    change: Callable[[VersionPayload], VersionPayload],
    message: str,
) -> None:
    payload = change(version_payload())  # model_copy: not validated yet
    # a stage's payload (validated where it is built, or by the in-process catalogue) and the HTTP API
    # give the same line, from the same schema
    with pytest.raises(InvalidPayload) as caught:
        validated(VersionPayload, payload.model_dump(), "debian-12")
    assert message in caught.value.message
    body = payload_json(payload)
    raw = json.dumps(body, default=str).encode()  # ensure_ascii: surrogates travel as \ud800 escapes
    r = api.client.post(V, content=raw, headers={**api.headers("alice"), "content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert any(message in d["msg"] for d in r.json()["detail"]), r.text


def test_expiry_is_capped_and_free_text_keeps_newlines(
    api: Api, version_payload: Callable[..., VersionPayload]
) -> None:
    far = version_payload().model_copy(
        update={"notes": "line one\n\tline two", "expires": datetime.now(UTC) + timedelta(days=9000)}
    )
    info = services.register_version(api.uow, "alice", far, api.settings)
    assert info.notes == "line one\n\tline two"
    assert info.expires - datetime.now(UTC) <= timedelta(days=365, seconds=5)


def test_list_lifetime_and_token_lifetime_settings_are_bounded(tmp_path: Any) -> None:
    settings = load_settings(BASE, tmp_path, environ={})
    for name, value in (
        ("VMI_IMAGE_LIST_LIFETIME_DAYS", "99999999999"),
        ("VMI_TOKEN_LIFETIME_DAYS", "0"),
        ("VMI_TOKEN_LIFETIME_DAYS", "367"),
        ("VMI_TOKEN_LIFETIME_DAYS", "²"),
    ):
        with pytest.raises(ConfigError) as caught:
            catalogue_settings(settings, {name: value})
        cap = 366
        assert caught.value.message == f"environment: {name}: must be a whole number of days from 1 to {cap}"
    assert catalogue_settings(settings, {"VMI_TOKEN_LIFETIME_DAYS": "30"}).token_days == 30
    assert catalogue_settings(settings, {}).token_days == 90


# --- section 7: no input gives a 500 -------------------------------------------------------------


def test_ids_beyond_64_bits_are_a_422(api: Api, version_payload: Callable[..., VersionPayload]) -> None:
    services.register_version(api.uow, "alice", version_payload(version="1.0"), api.settings)
    for big in (2**31, 2**63, 2**64 + 1, 10**40):
        r = api.client.get(f"{V}/1.0/images/{big}")
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "image_id"], r.text
        assert r.json()["detail"][0]["msg"] == "path.image_id: Input should be less than or equal to 2147483647"
        page = api.client.get(f"/appliances/debian-12/1.0/images/{big}")
        assert page.status_code == 422, page.text
        assert "image: an image id is a whole number from 1 to 2147483647" in page.text
    for bad in ("-1", "0", "1e3", "0x10"):
        assert api.client.get(f"{V}/1.0/images/{bad}").status_code == 422
        page = api.client.get(f"/appliances/debian-12/1.0/images/{bad}")
        assert page.status_code == 422, page.text
    # the page also takes the dc:identifier sites see in the list, in either case
    listed = api.client.get(f"{V}/1.0").json()["images"][0]
    for ref in (str(listed["id"]), listed["identifier"], listed["identifier"].upper()):
        page = api.client.get(f"/appliances/debian-12/1.0/images/{ref}")
        assert page.status_code == 200 and listed["sha512"] in page.text, ref


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [33, 1000, 100_000])
def test_deeply_nested_json_is_refused_before_parsing(
    api: Api, version_payload: Callable[..., VersionPayload], depth: int
) -> None:
    services.register_version(api.uow, "alice", version_payload(version="1.0"), api.settings)
    # depth counts the audit object and its checks list and check object: 3 + the field's own
    body = '{"checks":[{"id":"a","result":"pass","x":' + _deep(depth) + "}]}"
    headers = {**api.headers("admin"), "content-type": "application/json"}
    r = api.client.put(f"{V}/1.0/audit", content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert r.json()["detail"] == "request body: JSON nested deeper than 32 levels"


def test_nesting_inside_strings_does_not_count_and_29_levels_are_kept(
    api: Api, version_payload: Callable[..., VersionPayload]
) -> None:
    services.register_version(api.uow, "alice", version_payload(version="1.0"), api.settings)
    headers = {**api.headers("admin"), "content-type": "application/json"}
    evidence = json.dumps("[{" * 5000 + '\\"')
    body = '{"checks":[{"id":"a","result":"pass","evidence":' + evidence + ',"x":' + _deep(29) + "}]}"
    r = api.client.put(f"{V}/1.0/audit", content=body, headers=headers)
    assert r.status_code == 200, r.text
    # the in-process path (the adapter validates with the same schema) checks the same bound
    deep: Any = "leaf"
    for _ in range(40):
        deep = [deep]
    with pytest.raises(InvalidPayload, match=r"audit report: .*nested deeper than 32 levels"):
        validated(AuditIn, {"checks": PASSING_AUDIT["checks"], "x": deep}, "audit report")


SURROGATE_BODIES: list[tuple[str, str, dict[str, Any], str]] = [
    ("PUT", "/api/v1/appliances/debian-12", {"title": "\ud800", "description": "d"}, "title"),
    ("PUT", "/api/v1/appliances/debian-12", {"title": "t", "description": "d", "vos": ["\udc00"]}, "vos.0"),
    ("POST", "/api/v1/vos", {"name": "\ud800"}, "name"),
    ("POST", "/api/v1/vos", {"name": "vo.x", "description": "\ud800"}, "description"),
    ("POST", "/api/v1/users", {"name": "x", "email": "a@\ud800"}, "email"),
    ("POST", "/api/v1/users/admin/tokens", {"label": "\ud800"}, "label"),
    ("PUT", f"{V}/1.0/audit", {"checks": [{"id": "\ud800", "result": "pass"}]}, "checks.0.id"),
    ("PUT", f"{V}/1.0/audit", {"checks": [{"id": "a", "result": "pass", "path": "\ud800"}]}, "checks.0.path"),
    ("PUT", f"{V}/1.0/audit", {"checks": [{"id": "a", "result": "pass"}], "\ud800": 1}, "keys"),
    ("POST", f"{V}/1.0/endorsements", {"vo": "\ud800"}, "vo"),
]


@pytest.mark.parametrize(("method", "path", "body", "field"), SURROGATE_BODIES)
def test_lone_surrogates_are_a_422_naming_the_field(
    api: Api, version_payload: Callable[..., VersionPayload], method: str, path: str, body: dict[str, Any], field: str
) -> None:
    services.register_version(api.uow, "alice", version_payload(version="1.0"), api.settings)
    raw = json.dumps(body).encode()  # "\ud800" escapes: valid JSON, not encodable text
    headers = {**api.headers("admin"), "content-type": "application/json"}
    r = api.client.request(method, path, content=raw, headers=headers)
    assert r.status_code == 422, r.text
    assert field in r.text and ("valid Unicode text" in r.text or "without control characters" in r.text), r.text
    # the same bytes as raw (invalid) UTF-8
    utf8 = raw.decode().encode("utf-8", "surrogatepass").replace(b"\\ud800", "\ud800".encode("utf-8", "surrogatepass"))
    assert api.client.request(method, path, content=utf8, headers=headers).status_code in (400, 422)


# --- section 7: security headers -----------------------------------------------------------------


def test_every_response_carries_the_security_headers(api: Api, version_payload: Callable[..., VersionPayload]) -> None:
    services.register_version(api.uow, "alice", version_payload(version="1.0"), api.settings)
    key = "debian-12/1.0/debian-12-1.0.ova"
    for method, path in (
        ("GET", "/"),
        ("GET", "/appliances/debian-12/1.0"),
        ("GET", "/appliances/nope"),
        ("GET", "/vos"),
        ("GET", "/api/v1/appliances"),
        ("GET", "/api/v1/openapi.json"),
        ("GET", "/api/v1/nope"),
        ("POST", "/api/v1/vos"),
        ("GET", f"/repo/{key}"),
        ("HEAD", f"/repo/{key}"),
        ("GET", "/repo/nope"),
        ("GET", f"/vo/{VO}/image.list"),
        ("GET", "/static/catalogue.css"),
    ):
        r = api.client.request(method, path)
        assert r.headers["x-content-type-options"] == "nosniff", path
        assert r.headers["referrer-policy"] == "no-referrer", path
        assert r.headers["x-frame-options"] == "DENY", path
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp, path
    docs = api.client.get("/api/v1/docs")
    assert docs.status_code == 200 and "frame-ancestors 'none'" in docs.headers["content-security-policy"]


# --- section 7: tokens expire --------------------------------------------------------------------


def test_tokens_expire_by_default_and_show_when(api: Api) -> None:
    r = api.client.post("/api/v1/users/bob/tokens", json={"label": "ci"}, headers=api.headers("bob"))
    assert r.status_code == 201
    expires = datetime.fromisoformat(r.json()["info"]["expires"]).replace(tzinfo=UTC)
    assert timedelta(days=89, hours=23) < expires - datetime.now(UTC) <= timedelta(days=90)
    listed = api.client.get("/api/v1/users/bob/tokens", headers=api.headers("bob")).json()
    assert all(t["expires"] is not None for t in listed) and r.json()["info"] in listed
    r = api.client.post("/api/v1/users/bob/tokens", json={"label": "long", "days": 367}, headers=api.headers("bob"))
    assert r.status_code == 422 and r.json()["detail"][0]["msg"] == "days: Input should be less than or equal to 366"
    token = api.client.post("/api/v1/users/bob/tokens", json={"label": "x", "days": 1}, headers=api.headers("bob"))
    public_id, secret = token.json()["info"]["id"], token.json()["token"]
    engine = create_engine(api.settings.database_url)
    with engine.begin() as conn:
        past = datetime(2026, 1, 2, 3, 4)  # noqa: DTZ001 (stored as naive UTC)
        conn.execute(text("UPDATE api_tokens SET expires = :p WHERE public_id = :i"), {"p": past, "i": public_id})
    engine.dispose()
    r = api.client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 401 and r.json()["detail"] == "this API token expired on 2026-01-02 03:04 UTC"
    assert "POST /api/v1/users/<you>/tokens" in r.json()["hint"]


def test_migration_gives_old_tokens_a_lifetime_and_classifies_old_audits(database_url: str, tmp_path: Any) -> None:
    from pipeline.catalogue.db import downgrade, migrate

    downgrade(database_url, "base")
    migrate(database_url, "0001_initial")
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO users (id, name, email, role, created) VALUES "
                "(1, 'root', 'r@x', 'admin', '2026-01-01'), (2, 'ann', 'a@x', 'user', '2026-01-01')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO api_tokens (public_id, token_hash, user_id, label, created) "
                "VALUES ('abc', :h, 2, 'old', '2026-01-01')"
            ),
            {"h": "0" * 64},
        )
        conn.execute(
            text(
                "INSERT INTO appliances (id, name, title, description, owner_id, created) "
                "VALUES (1, 'a', 't', 'd', 2, '2026-01-01')"
            )
        )
        for vid in (1, 2):
            conn.execute(
                text(
                    "INSERT INTO versions (id, appliance_id, version, identifier, notes, created, expires, "
                    "published, archived, registered_by_id, payload_digest) VALUES (:v, 1, :n, :i, 'n', "
                    "'2026-01-01', '2027-01-01', true, false, 2, 'x')"
                ),
                {"v": vid, "n": str(vid), "i": f"id{vid}"},
            )
        conn.execute(
            text(
                "INSERT INTO audit_reports (version_id, stored, stored_by_id, passed, report) VALUES "
                "(1, '2026-01-01', 1, true, '{}'), (2, '2026-01-01', 2, true, '{}')"
            )
        )
    migrate(database_url)
    with engine.connect() as conn:
        expires = conn.execute(text("SELECT expires FROM api_tokens")).scalar_one()
        roles = conn.execute(text("SELECT version_id, stored_as FROM audit_reports ORDER BY version_id")).all()
    engine.dispose()
    if isinstance(expires, str):
        expires = datetime.fromisoformat(expires)
    assert timedelta(days=89) < expires.replace(tzinfo=UTC) - datetime.now(UTC) <= timedelta(days=90)
    assert [tuple(r) for r in roles] == [(1, "admin"), (2, "maintainer")]
    downgrade(database_url, "0001_initial")  # and back: one audit per version again
    migrate(database_url)
