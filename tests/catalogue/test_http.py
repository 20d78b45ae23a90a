"""The HTTP catalogue client against the service on loopback, and a site verifying what it serves."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.catalogue import auth
from pipeline.catalogue.client import open_catalogue
from pipeline.catalogue.contract import (
    AppliancePayload,
    ImagePayload,
    InvalidPayload,
    NotAuthenticated,
    NotEndorsable,
    NotFound,
    PermissionDenied,
    VersionConflict,
    VersionPayload,
)
from pipeline.catalogue.db import make_engine, session_factory
from pipeline.catalogue.http_client import HttpCatalogue
from pipeline.catalogue.models import Role
from pipeline.catalogue.uow import UnitOfWork
from pipeline.settings import load_settings
from pipeline.site.verify import verify_image_list
from tests.catalogue.conftest import PASSING_AUDIT, LiveServer, served_image

VO = "vo.example.org"


def _image(server: LiveServer, version: str, fmt: str) -> ImagePayload:
    return served_image(server, "debian-12", version, fmt)


def _tokens(server: LiveServer) -> dict[str, str]:
    engine = make_engine(server.settings.database_url)
    uow = UnitOfWork(session_factory(engine))
    tokens = {}
    for name, role in (("admin", Role.ADMIN), ("alice", Role.USER), ("mia", Role.USER)):
        auth.ensure_user(uow, name, f"{name}@example.org", role)
        tokens[name] = auth.issue_token(uow, name, name, "tests").token
    auth.create_vo(uow, "admin", VO, "")
    auth.set_vo_manager(uow, "admin", VO, "mia", present=True)
    engine.dispose()
    return tokens


def test_http_client_round_trip_and_site_verification(live_server: LiveServer, tmp_path: Path) -> None:
    tokens = _tokens(live_server)
    alice = HttpCatalogue(live_server.url, tokens["alice"])
    alice.ensure_appliance(AppliancePayload(name="debian-12", title="Debian 12", description="baseline", vos=(VO,)))
    payload = VersionPayload(
        appliance="debian-12",
        version="1.0",
        notes="first",
        images=(_image(live_server, "1.0", "ova"), _image(live_server, "1.0", "qcow2")),
    )
    info = alice.register_version(payload)
    assert alice.register_version(payload) == info  # idempotent over HTTP too
    assert alice.get_version("debian-12", "1.0") == info
    assert alice.get_version("debian-12", "9.9") is None
    assert alice.list_versions("debian-12") == [info]
    assert {i.uri for i in alice.list_images()} == {i.uri for i in payload.images}
    with pytest.raises(VersionConflict, match="different content"):
        alice.register_version(payload.model_copy(update={"notes": "other"}))
    with pytest.raises(InvalidPayload, match=r"images\.0: sha512 of .* differ"):
        bad = payload.images[0].model_copy(update={"sha512": "0" * 128})
        alice.register_version(payload.model_copy(update={"version": "2.0", "images": [bad]}))
    alice.store_audit("debian-12", "1.0", PASSING_AUDIT)
    with pytest.raises(PermissionDenied, match="not a manager"):
        alice.endorse("debian-12", "1.0", VO)

    mia = HttpCatalogue(live_server.url, tokens["mia"])
    # the maintainer's own audit is kept but does not gate endorsement: the endorser stores hers
    with pytest.raises(NotEndorsable, match=f"no policy audit stored by an admin or a manager of VO {VO}"):
        mia.endorse("debian-12", "1.0", VO)
    mia.store_audit("debian-12", "1.0", PASSING_AUDIT)
    listed = mia.endorse("debian-12", "1.0", VO)
    assert listed.url == f"{live_server.url}/vo/{VO}/image.list" and listed.entries == 2
    assert mia.image_list(VO) == alice.image_list(VO)

    # a site: fetch the stable URL, verify signature and signer, download and check every image
    ca = live_server.settings.signing_cert.parent / "ca.pem"  # type: ignore[union-attr]
    report = verify_image_list(listed.url, ca, download=tmp_path / "dl", allow_private_urls=True)  # 127.0.0.1
    assert report.version == str(listed.hv_version)
    assert sorted(d.size for d in report.downloads) == sorted(i.size for i in payload.images)

    with pytest.raises(NotAuthenticated):
        HttpCatalogue(live_server.url, "vmi_000000000000_forged").ensure_appliance(
            AppliancePayload(name="x", title="x", description="x")
        )
    with pytest.raises(NotFound):
        mia.revoke("debian-12", "9.9", VO)
    alice.close()
    mia.close()


def test_open_catalogue_picks_http_with_the_token_from_the_environment(
    live_server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = _tokens(live_server)
    monkeypatch.setenv("VMI_CATALOGUE_TOKEN", tokens["admin"])
    settings = load_settings(
        {
            "output_dir": "o",
            "work_dir": "w",
            "cache_dir": "c",
            "repository": "file://./r",
            "repository_public_url": "http://127.0.0.1:1/repo",
            "catalogue": live_server.url,
            "catalogue_public_url": live_server.url,
            "accel": "tcg",
        },
        tmp_path,
        environ={},
    )
    cat = open_catalogue(settings)
    assert isinstance(cat, HttpCatalogue)
    cat.ensure_appliance(
        AppliancePayload(name="made-by-admin", title="T", description="D", vos=("new.vo",))
    )  # admins may create VOs
    assert cat.list_images() == []
    cat.close()
