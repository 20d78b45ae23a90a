"""Cached public reads (issue 15): ETag/If-None-Match on lists, pages and signed image lists, and no
stale answer after a write, from this process or another one on the same database."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine, text

from pipeline.catalogue import endorsements, services
from pipeline.catalogue.contract import AppliancePayload, VersionPayload
from pipeline.catalogue.schemas import AuditIn
from tests.catalogue.conftest import PASSING_AUDIT, Api

ROOT = Path(__file__).resolve().parents[2]
VO = "vo.example.org"


def _generation(url: str) -> int:
    engine = create_engine(url)
    with engine.connect() as conn:
        value = int(conn.execute(text("SELECT generation FROM catalogue_state")).scalar_one())
    engine.dispose()
    return value


def test_lists_and_pages_answer_304_to_their_etag(api: Api) -> None:
    for path in ("/api/v1/appliances", "/api/v1/vos", "/api/v1/appliances/debian-12", "/", "/vos"):
        first = api.client.get(path)
        etag = first.headers["etag"]
        assert first.status_code == 200 and etag.startswith('"') and first.headers["cache-control"] == "no-cache"
        again = api.client.get(path)
        assert again.status_code == 200 and again.content == first.content and again.headers["etag"] == etag
        r = api.client.get(path, headers={"If-None-Match": etag})
        assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == etag, path
        assert r.headers["x-content-type-options"] == "nosniff"  # the security headers on 304s too
        assert api.client.get(path, headers={"If-None-Match": '"other"'}).status_code == 200
        head = api.client.head(path)
        assert head.status_code == 200 and head.content == b"" and head.headers["etag"] == etag
    # errors and private reads are never cached or tagged
    assert "etag" not in api.client.get("/api/v1/appliances/nope").headers
    assert "etag" not in api.client.get("/api/v1/users/me", headers=api.headers("admin")).headers


def test_a_write_in_this_process_is_seen_at_once(api: Api) -> None:
    before = api.client.get("/api/v1/appliances/debian-12")
    generation = _generation(api.settings.database_url)
    body = {"title": "A new title", "description": "D", "vos": []}
    assert api.client.put("/api/v1/appliances/debian-12", json=body, headers=api.headers("alice")).status_code == 200
    assert _generation(api.settings.database_url) == generation + 1
    after = api.client.get("/api/v1/appliances/debian-12", headers={"If-None-Match": before.headers["etag"]})
    assert after.status_code == 200 and after.json()["title"] == "A new title"
    assert after.headers["etag"] != before.headers["etag"]
    # a write elsewhere leaves this answer as it was: its tag still matches
    vos = api.client.get("/api/v1/vos/other.vo")
    assert api.client.put("/api/v1/appliances/debian-12", json=body, headers=api.headers("admin")).status_code == 200
    assert api.client.get("/api/v1/vos/other.vo", headers={"If-None-Match": vos.headers["etag"]}).status_code == 304
    # a use case called directly (the in-process catalogue) counts as well
    services.ensure_appliance(
        api.uow, "alice", AppliancePayload(name="debian-12", title="Third title", description="D", vos=())
    )
    assert api.client.get("/api/v1/appliances/debian-12").json()["title"] == "Third title"
    assert "Third title" in api.client.get("/").text


def test_a_write_by_another_process_is_seen_within_the_recheck(api: Api) -> None:
    assert api.client.get("/api/v1/appliances/debian-12").json()["title"] == "Debian 12 baseline"
    script = (
        "import sys\n"
        "from pipeline.catalogue import services\n"
        "from pipeline.catalogue.contract import AppliancePayload\n"
        "from pipeline.catalogue.db import make_engine, session_factory\n"
        "from pipeline.catalogue.uow import UnitOfWork\n"
        "uow = UnitOfWork(session_factory(make_engine(sys.argv[1])))\n"
        "payload = AppliancePayload(name='debian-12', title='From elsewhere', description='D')\n"
        "services.ensure_appliance(uow, 'alice', payload)\n"
    )
    subprocess.run([sys.executable, "-c", script, api.settings.database_url], cwd=ROOT, check=True, timeout=120)
    deadline = time.monotonic() + 30  # the cache re-reads the generation every 0.5 s
    while api.client.get("/api/v1/appliances/debian-12").json()["title"] != "From elsewhere":
        assert time.monotonic() < deadline, "another process's write never showed"
        time.sleep(0.1)


def test_signed_image_lists_carry_an_etag(signing_api: Api, version_payload: Callable[..., VersionPayload]) -> None:
    api = signing_api
    services.register_version(api.uow, "alice", version_payload(version="1.0"), api.settings)
    services.store_audit(api.uow, "admin", "debian-12", "1.0", AuditIn.model_validate(PASSING_AUDIT))
    endorsements.endorse(api.uow, "mia", "debian-12", "1.0", VO, api.client.app.state.catalogue.ctx)
    first = api.client.get(f"/vo/{VO}/image.list")
    assert first.status_code == 200 and b"multipart/signed" in first.content
    head = api.client.head(f"/vo/{VO}/image.list")
    assert head.status_code == 200 and head.content == b"" and head.headers["etag"] == first.headers["etag"]
    assert "x-vmi-cache-until" not in first.headers and "x-vmi-cache-until" not in head.headers  # internal only
    r = api.client.get(f"/vo/{VO}/image.list", headers={"If-None-Match": first.headers["etag"]})
    assert r.status_code == 304 and r.content == b""
    endorsements.revoke(api.uow, "mia", "debian-12", "1.0", VO, api.client.app.state.catalogue.ctx)
    r = api.client.get(f"/vo/{VO}/image.list", headers={"If-None-Match": first.headers["etag"]})
    assert r.status_code == 200 and r.content != first.content
