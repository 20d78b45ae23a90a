"""The audit without root: ``nobody`` audits a real disk and sees the guest's real owners and modes
(set-id bits, a group's gid, a mode-000 file's content), exactly as root's audit does."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.audit.report import audit_disk
from tests.endorse.disks import PACKAGES, TEST_KEY, good_rootfs, make_disk, write
from tests.endorse.unprivileged import audit_as_nobody, shared_folder


def test_nobody_audits_a_disk_and_sees_real_owners_and_modes(tmp_path: Path) -> None:
    with shared_folder() as shared:
        root = good_rootfs(shared / "rootfs")
        write(root, "usr/local/bin/rootsh", b"\x7fELF", 0o4755)  # set-id: rdump's copy drops the bit
        write(root, "opt/tool/run.sh", "#!/bin/sh\n", 0o755)
        os.chown(root / "opt/tool/run.sh", 1000, 1000)  # nobody could not chown its copy to this
        write(root, "root/deploy.pem", TEST_KEY, 0o000)  # unreadable for nobody unless the audit copes
        for table in ("mbr", "gpt-esp"):
            disk = make_disk(root, shared / f"disk-{table}.qcow2", table=table)
            disk.chmod(0o444)
            packages = [(p.name, p.version, p.arch) for p in PACKAGES]
            result = audit_as_nobody(disk, "qcow2", shared / f"scratch-{table}", packages=packages)
            assert (result["uid"], result["gid"], result["groups"]) == (65534, 65534, [])
            report = result["report"]
            failed = {c["id"]: c["evidence"] for c in report["checks"] if c["result"] == "fail"}
            assert sorted(failed) == ["private-keys", "security-updates", "setid-files", "unowned-files"]
            assert failed["setid-files"] == [
                "/usr/local/bin/rootsh: setuid (mode 4755, uid 0) is not on Debian's set-id allow-list"
            ]
            assert failed["unowned-files"] == ["/opt/tool/run.sh: uid 1000 is not in /etc/passwd"]
            assert failed["private-keys"] == ["/root/deploy.pem: -----BEGIN OPENSSH PRIVATE KEY----- block"]
            checks = {c["id"]: c["evidence"] for c in report["checks"]}
            assert checks["shadow-modes"] == [
                "/etc/shadow: mode 0640, owner 0:shadow; /etc/gshadow: mode 0640, owner 0:shadow"
            ]
            assert "/tmp" in checks["world-writable"][0]  # /tmp's sticky bit seen (mode 1777)
            assert not list((shared / f"scratch-{table}").iterdir())  # nobody removed its own copy
            ours = audit_disk(disk, "qcow2", scratch=tmp_path / table, packages=PACKAGES, security=None)
            assert [c.to_dict() for c in ours.checks] == report["checks"]  # root's audit: the same verdicts
