"""End to end: audit -> catalogue (real in-process SQLite) -> endorse -> signed list -> a site verifies it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pipeline.appliance import find_appliance
from pipeline.audit.report import SecuritySource, audit_disk, audit_version
from pipeline.catalogue.client import open_catalogue
from pipeline.catalogue.contract import VersionPayload
from pipeline.endorse import endorse_version
from pipeline.endorse.pki import DevCa
from pipeline.errors import PolicyError, VerificationError
from pipeline.registration import appliance_payload
from pipeline.settings import Settings, load_settings
from pipeline.site.verify import verify_image_list
from tests.endorse.conftest import serve_folder
from tests.endorse.disks import PACKAGES, good_rootfs, make_disk, write
from tests.endorse.test_audit_version import built_version, project
from tests.payloads import image_payload

VO = "vo.example.org"


@pytest.fixture
def served_repository(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "project" / "repository"
    root.mkdir(parents=True)
    with serve_folder(root) as url:
        yield root, url


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
    image = image_payload(f"{url}/{key}", data)
    catalogue = open_catalogue(settings)
    try:
        catalogue.ensure_appliance(appliance_payload(find_appliance(settings.templates_dir, "debian-12")))
        catalogue.register_version(
            VersionPayload(appliance="debian-12", version=version, notes=f"debian-12 {version}", images=(image,))
        )
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
    audit_version(settings, "debian-12", "2026.11.22")  # registered now: the report goes to the catalogue too
    catalogue = open_catalogue(settings)
    try:
        info = catalogue.get_version("debian-12", "2026.11.22")
        assert info is not None and info.audit_passed is True
    finally:
        catalogue.close()
    result = endorse_version(settings, "debian-12", "2026.11.22", VO)
    assert "policy audit passed: 35 checks, 0 waived" in result.summary()
    assert f"endorsed debian-12 2026.11.22 for {VO}" in result.summary()
    first = result.image_list.hv_version

    listed = current_list(settings, tmp_path / "image.list")
    proc = subprocess.run(["openssl", "smime", "-verify", "-in", str(listed), "-CAfile", str(dev_ca.ca_cert)])
    assert proc.returncode == 0
    state = tmp_path / "site-state.json"
    report = verify_image_list(
        listed,
        dev_ca.ca_cert,
        endorser_dn=dev_ca.endorser_dn,
        download=tmp_path / "site",
        state=state,
        allow_private_urls=True,  # the test repository is served on 127.0.0.1
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


def test_endorse_task_without_a_local_build_uses_the_stored_audit(
    tmp_path: Path, mirror: str, dev_ca: DevCa, served_repository: tuple[Path, str]
) -> None:
    repo_root, url = served_repository
    env = {
        "VMI_CATALOGUE": f"sqlite:///{tmp_path / 'catalogue.db'}",
        "VMI_OUTPUT_DIR": str(tmp_path / "nothing-built-here"),
        "VMI_WORK_DIR": str(tmp_path / "work"),
        "VMI_REPOSITORY": repo_root.as_uri(),
        "VMI_REPOSITORY_PUBLIC_URL": url,
        "VMI_SIGNING_KEY": str(dev_ca.endorser_key),
        "VMI_SIGNING_CERT": str(dev_ca.endorser_cert),
    }
    root = Path(__file__).resolve().parents[2]
    settings = load_settings(yaml.safe_load((root / "invoke.yaml").read_text())["vmi"], root, environ=env)
    disk = make_disk(good_rootfs(tmp_path / "rootfs"), tmp_path / "disk.qcow2")
    security = SecuritySource(mirror, "bookworm-security", "amd64")
    report = audit_disk(disk, "qcow2", scratch=tmp_path / "s", packages=PACKAGES, security=security)
    image = settings.version_dir("debian-12", "2026.11.22") / "build" / "debian-12-2026.11.22.qcow2"
    image.parent.mkdir(parents=True)
    shutil.copyfile(disk, image)
    publish(settings, served_repository, "2026.11.22")
    shutil.rmtree(settings.output_dir)  # the endorser's machine has no build: the catalogue's audit decides
    catalogue = open_catalogue(settings)
    try:
        catalogue.store_audit("debian-12", "2026.11.22", report.to_dict())
    finally:
        catalogue.close()
    argv = [sys.executable, "-m", "invoke", "endorse", "--appliance", "debian-12", "--version", "2026.11.22"]
    proc = subprocess.run([*argv, "--vo", VO], cwd=root, env={**os.environ, **env}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"endorsed debian-12 2026.11.22 for {VO}" in proc.stdout
    assert "the catalogue's stored audit decides" in proc.stderr
    listed = current_list(settings, tmp_path / "image.list")
    assert verify_image_list(listed, dev_ca.ca_cert, endorser_dn=dev_ca.endorser_dn).images[0].version == "2026.11.22"
