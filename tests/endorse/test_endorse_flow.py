"""End to end: audit -> catalogue (real in-process SQLite) -> endorse -> signed list -> a site verifies it."""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.appliance import find_appliance
from pipeline.catalogue.client import open_catalogue
from pipeline.catalogue.contract import ImagePayload, VersionPayload, appliance_payload
from pipeline.endorse import endorse_version
from pipeline.endorse.pki import DevCa
from pipeline.endorse.verify import verify_image_list
from pipeline.errors import PolicyError, VerificationError
from pipeline.settings import Settings
from tests.endorse.disks import good_rootfs, write
from tests.endorse.test_audit_version import built_version, project

VO = "vo.example.org"


@pytest.fixture
def served_repository(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "project" / "repository"
    root.mkdir(parents=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def endorsing(
    tmp_path: Path, mirror: str, dev_ca: DevCa, served_repository: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> Settings:
    monkeypatch.setenv("VMI_SIGNING_KEY", str(dev_ca.endorser_key))
    monkeypatch.setenv("VMI_SIGNING_CERT", str(dev_ca.endorser_cert))
    _root, url = served_repository
    return project(tmp_path, mirror, repository_public_url=url)


def publish(settings: Settings, repository: tuple[Path, str], version: str) -> str:
    """Put the version's disk in the repository and register it (what `invoke publish` does)."""
    root, url = repository
    key = f"debian-12/{version}/debian-12-{version}.qcow2"
    (root / key).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(settings.version_dir("debian-12", version) / "build" / f"debian-12-{version}.qcow2", root / key)
    data = (root / key).read_bytes()
    image = ImagePayload(
        uri=f"{url}/{key}",
        format="qcow2",
        size=len(data),
        sha512=hashlib.sha512(data).hexdigest(),
        sha256=hashlib.sha256(data).hexdigest(),
        arch="x86_64",
        os_family="linux",
        os_name="Debian",
        os_version="12",
    )
    catalogue = open_catalogue(settings)
    try:
        catalogue.ensure_appliance(appliance_payload(find_appliance(settings.templates_dir, "debian-12")))
        catalogue.register_version(VersionPayload("debian-12", version, f"debian-12 {version}", (image,)))
    finally:
        catalogue.close()
    return image.uri


def current_list(settings: Settings, path: Path) -> Path:
    catalogue = open_catalogue(settings)
    try:
        path.write_bytes(catalogue.image_list(VO))
    finally:
        catalogue.close()
    return path


def test_endorse_then_a_site_verifies_and_downloads(
    endorsing: Settings, served_repository: tuple[Path, str], dev_ca: DevCa, tmp_path: Path
) -> None:
    settings = endorsing
    built_version(settings, good_rootfs(tmp_path / "rootfs"))
    uri = publish(settings, served_repository, "2026.11.22")
    result = endorse_version(settings, "debian-12", "2026.11.22", VO)
    assert "policy audit passed: 21 checks, 0 waived" in result.summary()
    assert f"endorsed debian-12 2026.11.22 for {VO}" in result.summary()
    first = result.image_list.hv_version

    listed = current_list(settings, tmp_path / "image.list")
    proc = subprocess.run(["openssl", "smime", "-verify", "-in", str(listed), "-CAfile", str(dev_ca.ca_cert)])
    assert proc.returncode == 0
    state = tmp_path / "site-state.json"
    report = verify_image_list(
        listed, dev_ca.ca_cert, endorser_dn=dev_ca.endorser_dn, download=tmp_path / "site", state=state
    )
    (image,) = report.images
    assert image.uri == uri and report.version == str(first)
    assert report.downloads[0].path.read_bytes() == (served_repository[0] / uri.split("/", 3)[3]).read_bytes()

    revoked = endorse_version(settings, "debian-12", "2026.11.22", VO, revoke=True)
    assert revoked.image_list.hv_version > first and revoked.image_list.entries == 0
    first_bytes = listed.read_bytes()
    after = verify_image_list(current_list(settings, listed), dev_ca.ca_cert, state=state)
    assert after.images == () and int(after.version) > first
    # a replay of the older, validly signed list (the image still in it) is refused now
    listed.write_bytes(first_bytes)
    with pytest.raises(VerificationError, match="rolled back"):
        verify_image_list(listed, dev_ca.ca_cert, state=state)


def test_failing_audit_is_stored_and_refused(
    endorsing: Settings, served_repository: tuple[Path, str], tmp_path: Path
) -> None:
    settings = endorsing
    rootfs = good_rootfs(tmp_path / "rootfs")
    write(rootfs, "/etc/ssh/ssh_host_rsa_key.pub", "ssh-rsa AAAA root@build\n")
    built_version(settings, rootfs)
    publish(settings, served_repository, "2026.11.22")
    with pytest.raises(PolicyError, match="fails the policy audit: ssh-host-keys"):
        endorse_version(settings, "debian-12", "2026.11.22", VO)
    catalogue = open_catalogue(settings)
    try:
        info = catalogue.get_version("debian-12", "2026.11.22")
        assert info is not None and info.audit_passed is False and info.active_vos == ()
    finally:
        catalogue.close()


def test_waived_failure_can_be_endorsed(
    endorsing: Settings, served_repository: tuple[Path, str], tmp_path: Path
) -> None:
    settings = endorsing
    rootfs = good_rootfs(tmp_path / "rootfs")
    write(rootfs, "/var/log/motd.log", "welcome\n")
    built_version(settings, rootfs)
    publish(settings, served_repository, "2026.11.22")
    (settings.templates_dir / "debian-12" / "audit-waivers.yaml").write_text(
        "waivers:\n  - check: logs\n    reason: motd.log is the appliance's banner, not a log\n"
    )
    result = endorse_version(settings, "debian-12", "2026.11.22", VO)
    assert "1 waived" in result.summary() and result.image_list.entries == 1
