"""The real debian-12 reference build passes the policy audit with no waivers.

Uses the root ``reference_build`` fixture (the real Packer + QEMU build); the security check
fetches bookworm-security's index from the appliance's mirror, as the build did.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.appliance import find_appliance
from pipeline.audit.report import CheckStatus, audit_disk, security_source
from pipeline.manifest import BuildManifest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.build
def test_reference_image_passes_without_waivers(reference_build: tuple[Path, BuildManifest], tmp_path: Path) -> None:
    version_dir, manifest = reference_build
    appliance = find_appliance(ROOT / "packer_templates", "debian-12", ROOT / "provisioners")
    disk = manifest.artifact("build-disk")
    report = audit_disk(
        version_dir / disk.name,
        disk.format,
        scratch=tmp_path,
        packages=manifest.packages,
        security=security_source(appliance, manifest.arch),
        waivers={},
        appliance="debian-12",
        version=manifest.version,
    )
    assert [c.id for c in report.checks if c.result != CheckStatus.PASS] == [], report.summary()
    assert len(report.checks) == 22
