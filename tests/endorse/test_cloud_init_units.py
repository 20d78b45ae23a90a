"""cloud-init 24.3+ (Debian 13) calls its network stage cloud-init-network.service: the audit accepts
the new name where the image ships it, and still fails an image where it is not enabled."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.audit.report import SecuritySource, audit_disk
from tests.endorse.disks import PACKAGES, good_rootfs, make_disk, write


def _trixie_units(root: Path, enabled: bool = True) -> Path:
    wants = root / "etc/systemd/system/cloud-init.target.wants"
    (wants / "cloud-init.service").unlink()
    (root / "lib/systemd/system/cloud-init.service").unlink()
    write(root, "usr/lib/systemd/system/cloud-init-network.service", "[Unit]\n[Install]\nWantedBy=cloud-init.target\n")
    if enabled:
        os.symlink("/usr/lib/systemd/system/cloud-init-network.service", wants / "cloud-init-network.service")
    return root


def _audit(tmp_path: Path, mirror: str, root: Path):  # type: ignore[no-untyped-def]
    disk = make_disk(root, tmp_path / "disk.qcow2")
    security = SecuritySource(mirror, "bookworm-security", "amd64")
    return audit_disk(disk, "qcow2", scratch=tmp_path / "s", packages=PACKAGES, security=security, appliance="t",
                      version="1")  # fmt: skip


def test_renamed_network_unit_is_accepted(tmp_path: Path, mirror: str) -> None:
    report = _audit(tmp_path, mirror, _trixie_units(good_rootfs(tmp_path / "rootfs")))
    assert report.passed, report.summary()
    assert (
        "/etc/systemd/system/cloud-init.target.wants/cloud-init-network.service (enabled)"
        in report.check("cloud-init-enabled").evidence
    )


def test_renamed_network_unit_not_enabled_fails(tmp_path: Path, mirror: str) -> None:
    report = _audit(tmp_path, mirror, _trixie_units(good_rootfs(tmp_path / "rootfs"), enabled=False))
    assert [c.id for c in report.failures] == ["cloud-init-enabled"], report.summary()
    assert report.check("cloud-init-enabled").evidence == (
        "cloud-init-network.service is not enabled: no symlink in /etc/systemd/system/*.wants/",
    )
