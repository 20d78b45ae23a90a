"""Retention on a real catalogue (SQLite, in-process) and a real file repository, with signed VO lists."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.appliance import Appliance, load_all
from pipeline.catalogue.auth import ensure_user
from pipeline.catalogue.client import open_catalogue
from pipeline.catalogue.contract import AppliancePayload, Catalogue, ImagePayload, VersionPayload
from pipeline.catalogue.inprocess import InProcessCatalogue
from pipeline.catalogue.models import Role
from pipeline.endorse.pki import make_dev_ca
from pipeline.fsutil import hash_file
from pipeline.rebuild.retention import apply_retention
from pipeline.repository import Repository, open_repository
from pipeline.settings import Settings

VO = "vo.example.org"
PASSING_AUDIT = {"checks": [{"id": "ssh-host-keys", "result": "pass", "evidence": "none found"}]}


@dataclass
class Published:
    settings: Settings
    catalogue: Catalogue
    repository: Repository
    appliances: dict[str, Appliance]

    def publish(self, version: str, expires_in_days: float | None = None) -> str:
        """Upload an image and its SHA256SUMS to the repository and register the version; returns its key."""
        folder = self.settings.work_dir / "files" / version
        folder.mkdir(parents=True)
        image = folder / f"debian-12-{version}.qcow2"
        image.write_bytes(os.urandom(4096) + version.encode())
        sums = folder / "SHA256SUMS"
        digests = hash_file(image)
        sums.write_text(f"{digests.sha256}  {image.name}\n")
        key = f"debian-12/{version}/{image.name}"
        self.repository.put(key, image, digests)
        self.repository.put(f"debian-12/{version}/SHA256SUMS", sums, hash_file(sums))
        expires = None
        if expires_in_days is not None:
            expires = datetime.now(UTC) + timedelta(days=expires_in_days)
        payload = ImagePayload(
            uri=self.repository.public_url(key),
            format="qcow2",
            size=digests.size,
            sha512=digests.sha512,
            sha256=digests.sha256,
            arch="x86_64",
            os_family="linux",
            os_name="Debian",
            os_version="12",
        )
        self.catalogue.register_version(
            VersionPayload(
                appliance="debian-12", version=version, notes=f"v {version}", images=(payload,), expires=expires
            )
        )
        return key

    def keys(self) -> list[str]:
        return sorted(o.key for o in self.repository.iter_objects("debian-12/"))

    def listed(self) -> list[str]:
        """Image URIs in the VO's current signed list (the JSON inside the S/MIME message)."""
        body = self.catalogue.image_list(VO).decode()
        start = body.index('{"hv:imagelist"') if '{"hv:imagelist"' in body else body.index("{")
        doc, _ = json.JSONDecoder().raw_decode(body[start:])
        return sorted(i["hv:image"]["hv:uri"] for i in doc["hv:imagelist"].get("hv:images", []))


@pytest.fixture
def published(project: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Published]:
    ca = make_dev_ca(tmp_path / "ca")
    monkeypatch.setenv("VMI_SIGNING_KEY", str(ca.endorser_key))
    monkeypatch.setenv("VMI_SIGNING_CERT", str(ca.endorser_cert))
    catalogue = open_catalogue(project)
    appliances = load_all(project.templates_dir, project.provisioners_dir)
    a = appliances["debian-12"]
    catalogue.ensure_appliance(AppliancePayload(name=a.name, title=a.title, description=a.description, vos=a.vos))
    try:
        yield Published(project, catalogue, open_repository(project), appliances)
    finally:
        catalogue.close()


def test_retire_superseded_archive_first_then_delete(published: Published, caplog: pytest.LogCaptureFixture) -> None:
    p = published
    keys = {v: p.publish(v) for v in ["2026.11.1", "2026.11.2", "2026.11.3", "2026.11.4", "2026.11.5"]}
    p.publish("2026.11.6", expires_in_days=3)  # newest, but about to expire
    # the VO endorsed an old version: it is what sites replicate until it is retired
    p.catalogue.store_audit("debian-12", "2026.11.1", PASSING_AUDIT)
    p.catalogue.endorse("debian-12", "2026.11.1", VO)
    before = p.catalogue.image_list(VO)
    assert p.listed() == [p.repository.public_url(keys["2026.11.1"])]

    dry = apply_retention(p.appliances, p.catalogue, p.repository, datetime.now(UTC), dry_run=True)
    assert [(r.version, r.reason) for r in dry.retired] == [
        ("2026.11.2", "superseded: 4 newer versions (newest 2026.11.6)"),
        ("2026.11.1", "superseded: 5 newer versions (newest 2026.11.6)"),
    ]
    assert "would retire" in dry.summary() and len(p.keys()) == 12  # nothing touched
    assert not any(v.archived for v in p.catalogue.list_versions("debian-12"))

    with caplog.at_level(logging.WARNING, logger="vmi"):
        report = apply_retention(p.appliances, p.catalogue, p.repository, datetime.now(UTC))
    assert report.ok, report.errors
    archived = {v.version for v in p.catalogue.list_versions("debian-12") if v.archived}
    assert archived == {"2026.11.1", "2026.11.2"}
    # their objects are gone (image and sums), everything else stays
    assert p.keys() == sorted(
        f"debian-12/{v}/{f}"
        for v in ["2026.11.3", "2026.11.4", "2026.11.5", "2026.11.6"]
        for f in ("SHA256SUMS", f"debian-12-{v}.qcow2")
    )
    assert report.deleted["debian-12 2026.11.1"] == [
        f"debian-12/2026.11.1/{n}" for n in ("SHA256SUMS", "debian-12-2026.11.1.qcow2")
    ]
    # the VO got a new signed list without the retired version
    after = p.catalogue.image_list(VO)
    assert after != before and p.listed() == []
    # and the maintainer is told about the version that expires within 5 days
    assert [(e.version, round(e.days_left)) for e in report.expiring] == [("2026.11.6", 3)]
    assert "debian-12 2026.11.6 expires on" in caplog.text
    summary = report.summary()
    assert "2026.11.1  retired" in summary and "deleted 2 objects" in summary and "expires soon" in summary

    # a second run has nothing left to do
    again = apply_retention(p.appliances, p.catalogue, p.repository, datetime.now(UTC))
    assert again.retired == [] and again.deleted == {} and len(p.keys()) == 8


def test_expired_versions_are_retired_and_leftovers_of_a_killed_run_deleted(published: Published) -> None:
    p = published
    p.publish("2026.11.1", expires_in_days=10)
    p.publish("2026.11.2", expires_in_days=300)
    p.publish("2026.11.3", expires_in_days=300)
    # a previous run archived 2026.11.2 and was killed before it deleted the objects
    p.catalogue.archive_version("debian-12", "2026.11.2")
    later = datetime.now(UTC) + timedelta(days=11)  # 2026.11.1 has expired by then
    report = apply_retention(p.appliances, p.catalogue, p.repository, later)
    assert [(r.version, r.reason[:8]) for r in report.retired] == [("2026.11.1", "expired ")]
    assert set(report.deleted) == {"debian-12 2026.11.1", "debian-12 2026.11.2"}
    assert {k.split("/")[1] for k in p.keys()} == {"2026.11.3"}


def test_archive_refused_keeps_the_objects(published: Published) -> None:
    """If the catalogue refuses to archive, nothing is deleted: a listed image never loses its file."""
    p = published
    for v in ["2026.11.1", "2026.11.2"]:
        p.publish(v)
    # the same catalogue, used by an account that does not maintain debian-12
    admin = p.catalogue
    assert isinstance(admin, InProcessCatalogue)
    ensure_user(admin.uow, "someone", "someone@example.org", Role.USER)
    stranger = InProcessCatalogue(admin.settings, actor="someone")
    keep_one = {"debian-12": _with_keep(p.appliances["debian-12"], 1), "never-published": p.appliances["debian-12"]}
    try:
        report = apply_retention(keep_one, stranger, p.repository, datetime.now(UTC))
    finally:
        stranger.close()
    assert len(report.errors) == 1 and not report.ok
    assert report.errors[0].startswith("debian-12 2026.11.1: archiving failed, objects kept: ")
    assert len(p.keys()) == 4 and not any(v.archived for v in admin.list_versions("debian-12"))


def _with_keep(a: Appliance, keep: int) -> Appliance:
    return dataclasses.replace(a, rebuild=dataclasses.replace(a.rebuild, keep_versions=keep))
