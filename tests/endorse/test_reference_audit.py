"""The real reference builds (debian-12, debian-13) pass the policy audit with no waivers; debian-12's
audit runs as ``nobody`` (no root, no groups, no capabilities), the way a site audits a downloaded image.

Uses the root ``reference_build``/``reference_build_13`` fixtures (the real Packer + QEMU builds); the
security check fetches the suite's index from the appliance's mirror, as the build did.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.appliance import find_appliance
from pipeline.audit.checks import CHECK_IDS
from pipeline.audit.report import CheckStatus, audit_disk, security_source
from pipeline.manifest import BuildManifest
from tests.endorse.unprivileged import audit_as_nobody, shared_folder

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.build
def test_reference_image_passes_without_waivers_as_nobody(reference_build: tuple[Path, BuildManifest]) -> None:
    version_dir, manifest = reference_build
    appliance = find_appliance(ROOT / "packer_templates", "debian-12", ROOT / "provisioners")
    disk = manifest.artifact("build-disk")
    security = security_source(appliance, manifest.arch)
    assert security is not None
    with shared_folder() as shared:
        result = audit_as_nobody(
            version_dir / disk.name,
            disk.format,
            shared / "scratch",
            packages=[(p.name, p.version, p.arch) for p in manifest.packages],
            security=(security.mirror, security.suite, security.arch),
        )
    assert result["uid"] == 65534
    report = result["report"]
    assert [c["id"] for c in report["checks"] if c["result"] != "pass"] == [], report["checks"]
    assert {c["id"] for c in report["checks"]} == CHECK_IDS and len(CHECK_IDS) == 35
    evidence = {c["id"]: c["evidence"] for c in report["checks"]}
    assert "/etc/shadow: mode 0640, owner 0:shadow" in evidence["shadow-modes"][0]  # real group, seen by nobody
    assert "/usr/bin/passwd" in evidence["setid-files"][0]  # set-id bits seen by nobody


@pytest.mark.slow
@pytest.mark.build
def test_reference_13_passes_without_waivers(reference_build_13: tuple[Path, BuildManifest], tmp_path: Path) -> None:
    version_dir, manifest = reference_build_13
    appliance = find_appliance(ROOT / "packer_templates", "debian-13", ROOT / "provisioners")
    disk = manifest.artifact("build-disk")
    report = audit_disk(
        version_dir / disk.name,
        disk.format,
        scratch=tmp_path,
        packages=manifest.packages,
        security=security_source(appliance, manifest.arch),
        waivers={},
        appliance="debian-13",
        version=manifest.version,
        unattended_upgrades=appliance.unattended_upgrades,
    )
    assert [c.id for c in report.checks if c.result != CheckStatus.PASS] == [], report.summary()
    assert len(report.checks) == 35
