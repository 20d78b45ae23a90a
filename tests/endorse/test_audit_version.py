"""audit_version: finds the build disk through the manifest, applies the appliance's waivers, writes audit.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.audit.report import AUDIT_FILE, audit_version
from pipeline.fsutil import hash_file
from pipeline.manifest import Artifact, BaseRef, BuildManifest
from pipeline.settings import Settings, load_settings
from tests.endorse.disks import PACKAGES, good_rootfs, make_disk, write

ROOT = Path(__file__).resolve().parents[2]


def project(tmp_path: Path, mirror: str, **overrides: str) -> Settings:
    """A project checkout in tmp_path whose debian-12 appliance takes security updates from ``mirror``."""
    root = tmp_path / "project"
    shutil.copytree(ROOT / "packer_templates" / "debian-12", root / "packer_templates" / "debian-12")
    shutil.copytree(ROOT / "packer_templates" / "_shared", root / "packer_templates" / "_shared")
    shutil.copytree(ROOT / "provisioners", root / "provisioners")
    definition = root / "packer_templates" / "debian-12" / "appliance.yaml"
    data = yaml.safe_load(definition.read_text())
    data["base"]["bootstrap"]["security_mirror"] = mirror
    definition.write_text(yaml.safe_dump(data))
    config = {**yaml.safe_load((ROOT / "invoke.yaml").read_text())["vmi"], **overrides}
    return load_settings(config, root, environ={})


def built_version(settings: Settings, rootfs: Path, version: str = "2026.11.22") -> Path:
    version_dir = settings.version_dir("debian-12", version)
    disk = make_disk(rootfs, version_dir / "build" / f"debian-12-{version}.qcow2")
    artifact = Artifact.from_digests(f"build/{disk.name}", "build-disk", "qcow2", hash_file(disk))
    manifest = BuildManifest(
        appliance="debian-12",
        version=version,
        created="2026-11-22T00:00:00Z",
        inputs_digest="0" * 64,
        inputs={},
        git_commit=None,
        tools={},
        accel="tcg",
        os={"family": "linux", "name": "Debian", "version": "12"},
        arch="x86_64",
        base=BaseRef("bootstrap", "bookworm", "0" * 64),
        packages=PACKAGES,
        artifacts=(artifact,),
        timings={},
    )
    # BuildManifest.save() validates to_dict(), which keeps artifacts a tuple (schema wants an array)
    (version_dir / "manifest.json").write_text(manifest.to_json())
    return version_dir


def test_audit_version_writes_the_report(tmp_path: Path, mirror: str) -> None:
    settings = project(tmp_path, mirror)
    version_dir = built_version(settings, good_rootfs(tmp_path / "rootfs"))
    report = audit_version(settings, "debian-12")
    assert report.passed and report.version == "2026.11.22"
    saved = json.loads((version_dir / AUDIT_FILE).read_text())
    assert saved["result"] == "pass" and saved["appliance"] == "debian-12"
    assert [c["id"] for c in saved["checks"]][:2] == ["disk-format", "ssh-host-keys"]
    assert f"{mirror} bookworm-security" in report.check("security-updates").evidence[0]


def test_audit_version_applies_the_appliance_waivers(tmp_path: Path, mirror: str) -> None:
    settings = project(tmp_path, mirror)
    rootfs = good_rootfs(tmp_path / "rootfs")
    write(rootfs, "/var/log/motd.log", "welcome\n")
    built_version(settings, rootfs)
    assert not audit_version(settings, "debian-12").passed
    waivers = settings.templates_dir / "debian-12" / "audit-waivers.yaml"
    waivers.write_text("waivers:\n  - check: logs\n    reason: motd.log is the appliance's banner, not a log\n")
    report = audit_version(settings, "debian-12")
    assert report.passed and report.check("logs").result == "waived"
    assert report.waivers_file == str(waivers)
    assert "waived: motd.log is the appliance's banner" in report.summary()


def test_audit_version_without_a_build(tmp_path: Path, mirror: str) -> None:
    from pipeline.errors import ArtifactError

    with pytest.raises(ArtifactError, match="no built version of debian-12"):
        audit_version(project(tmp_path, mirror), "debian-12")


def test_audit_before_publish_is_not_stored_and_an_unreachable_catalogue_only_warns(
    tmp_path: Path, mirror: str, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from pipeline.audit.report import store_if_registered
    from pipeline.catalogue.client import open_catalogue

    settings = project(tmp_path, mirror)
    built_version(settings, good_rootfs(tmp_path / "rootfs"))
    report = audit_version(settings, "debian-12")
    catalogue = open_catalogue(settings)
    try:
        assert catalogue.get_version("debian-12", "2026.11.22") is None  # not published: nothing stored
    finally:
        catalogue.close()
    offline = project(tmp_path / "other", mirror, catalogue="http://127.0.0.1:9")
    with caplog.at_level(logging.WARNING, logger="vmi"):
        assert store_if_registered(offline, report) is False
    assert "audit not stored in the catalogue" in caplog.text and "unreachable" in caplog.text


def test_audit_image_task_exit_codes(tmp_path: Path, mirror: str) -> None:
    import os
    import subprocess
    import sys

    settings = project(tmp_path, mirror)
    for name in ("tasks.py", "invoke.yaml"):  # the same CLI, run from the temporary checkout
        shutil.copyfile(ROOT / name, settings.root / name)
    built_version(settings, good_rootfs(tmp_path / "good"), "2026.11.22")
    bad = good_rootfs(tmp_path / "bad")
    write(bad, "/root/.bash_history", "ls\n")
    built_version(settings, bad, "2026.11.22.1")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def audit_image(version: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "invoke", "audit-image", "--appliance", "debian-12", "--version", version]
        return subprocess.run(argv, cwd=settings.root, env=env, capture_output=True, text=True)

    ok = audit_image("2026.11.22")
    assert ok.returncode == 0, ok.stderr
    assert "audit passed: 35 checks, 0 waived" in ok.stdout
    failing = audit_image("2026.11.22.1")
    assert failing.returncode == 1
    assert "FAIL   histories" in failing.stdout and "/root/.bash_history exists" in failing.stdout
    assert json.loads((settings.version_dir("debian-12", "2026.11.22.1") / AUDIT_FILE).read_text())["result"] == "fail"
