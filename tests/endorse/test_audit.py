"""The policy audit against real small disks: one that passes everything, and one per broken check."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.audit.disk import RootFs
from pipeline.audit.report import CheckStatus, SecuritySource, audit_disk, load_waivers
from pipeline.errors import ArtifactError, ConfigError
from pipeline.manifest import InstalledPackage
from tests.endorse.disks import PACKAGES, TEST_KEY, dpkg_status, good_rootfs, make_disk, write

Mutation = Callable[[Path], object]


def run_audit(
    tmp_path: Path,
    mirror: str,
    mutate: Mutation | None = None,
    suite: str = "bookworm-security",
    table: str = "mbr",
    waivers: dict[str, str] | None = None,
    packages: tuple = PACKAGES,  # type: ignore[type-arg]
    unattended_upgrades: bool = False,
):  # type: ignore[no-untyped-def]
    root = good_rootfs(tmp_path / "rootfs")
    if mutate is not None:
        mutate(root)
    disk = make_disk(root, tmp_path / "disk.qcow2", table=table)
    return audit_disk(
        disk,
        "qcow2",
        scratch=tmp_path / "scratch",
        packages=packages,
        security=SecuritySource(mirror, suite, "amd64"),
        waivers=waivers,
        appliance="test",
        version="1",
        unattended_upgrades=unattended_upgrades,
    )


@pytest.mark.parametrize("table", ["mbr", "gpt", "gpt-esp", "none"])
def test_sealed_image_passes_every_check(tmp_path: Path, mirror: str, table: str) -> None:
    report = run_audit(tmp_path, mirror, table=table)
    assert report.passed, report.summary()
    assert [c.result for c in report.checks] == [CheckStatus.PASS] * len(report.checks)
    assert len(report.checks) == 35
    sshd = report.check("sshd-password-auth").evidence
    assert "passwordauthentication no (/etc/ssh/sshd_config.d/00-vmi-hardening.conf:2, first match wins)" in sshd
    assert "audit passed: 35 checks, 0 waived" in report.summary()
    assert not list((tmp_path / "scratch").iterdir())  # scratch copy removed


def _append(path: str, text: str) -> Mutation:
    def mutate(root: Path) -> None:
        with open(root / path.lstrip("/"), "a") as f:
            f.write(text)

    return mutate


def _prepend(path: str, text: str) -> Mutation:
    def mutate(root: Path) -> None:
        target = root / path.lstrip("/")
        target.write_text(text + target.read_text())

    return mutate


def _file(path: str, text: str | bytes = "x\n", mode: int = 0o644) -> Mutation:
    return lambda root: write(root, path, text, mode)


def _chmod(path: str, mode: int) -> Mutation:
    return lambda root: (root / path.lstrip("/")).chmod(mode)


def _chown(path: str, uid: int, gid: int) -> Mutation:
    return lambda root: os.chown(root / path.lstrip("/"), uid, gid)


def _link(path: str, target: str) -> Mutation:
    def mutate(root: Path) -> None:
        (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / path.lstrip("/"))

    return mutate


def _replace(path: str, old: str, new: str) -> Mutation:
    def mutate(root: Path) -> None:
        target = root / path.lstrip("/")
        target.write_text(target.read_text().replace(old, new))

    return mutate


def _unlink(*paths: str) -> Mutation:
    def mutate(root: Path) -> None:
        for p in paths:
            os.unlink(root / p.lstrip("/"))

    return mutate


def _both(*mutations: Mutation) -> Mutation:
    def mutate(root: Path) -> None:
        for m in mutations:
            m(root)

    return mutate


BROKEN = {
    "host key": (
        "ssh-host-keys", _file("/etc/ssh/ssh_host_ed25519_key.pub", "ssh-ed25519 AAAA root@build\n"),
        "/etc/ssh/ssh_host_ed25519_key.pub exists"),
    "authorized_keys in /srv": (
        "authorized-keys", _file("/srv/app/.ssh/authorized_keys", "ssh-ed25519 AAAA x\n"),
        "/srv/app/.ssh/authorized_keys exists"),
    "root login before the Include": (
        "sshd-root-login", _prepend("/etc/ssh/sshd_config", "PermitRootLogin yes\n"),
        "permitrootlogin yes (/etc/ssh/sshd_config:1, first match wins): must be no"),
    "root login left at the default": (
        "sshd-root-login", _replace("/etc/ssh/sshd_config.d/00-vmi-hardening.conf", "PermitRootLogin no\n", ""),
        "permitrootlogin prohibit-password (built-in default, first match wins): must be no"),
    "root login in a Match block": (
        "sshd-root-login", _append("/etc/ssh/sshd_config", "Match Address 10.0.0.0/8\n  PermitRootLogin yes\n"),
        "permitrootlogin yes inside 'Match Address 10.0.0.0/8' (/etc/ssh/sshd_config:12): must be no"),
    "passwords in an earlier drop-in": (
        "sshd-password-auth", _file("/etc/ssh/sshd_config.d/00-aaa.conf", "PasswordAuthentication=yes\n"),
        "passwordauthentication yes (/etc/ssh/sshd_config.d/00-aaa.conf:1, first match wins): must be no"),
    "keyboard-interactive": (
        "sshd-password-auth", _both(
            _replace("/etc/ssh/sshd_config.d/00-vmi-hardening.conf", "KbdInteractiveAuthentication no\n", ""),
            _replace("/etc/ssh/sshd_config", "KbdInteractiveAuthentication no", "ChallengeResponseAuthentication yes")),
        "kbdinteractiveauthentication yes (/etc/ssh/sshd_config:5, first match wins): must be no"),
    "root password": (
        "root-locked", _replace("/etc/shadow", "root:!*:", "root:$6$salt$hash:"),
        "/etc/shadow: root has a usable password"),
    "empty password": (
        "empty-passwords", _replace("/etc/shadow", "daemon:*:", "daemon::"),
        "/etc/shadow: daemon has an empty password field"),
    "second uid 0": (
        "extra-uid0", _append("/etc/passwd", "toor:x:0:0::/root:/bin/sh\n"), "/etc/passwd: toor has UID 0"),
    "build user": (
        "build-user", _both(_append("/etc/passwd", "packer:x:1000:1000::/home/packer:/bin/bash\n"),
                            _file("/home/packer/.profile"),
                            _file("/etc/sudoers.d/packer", "packer ALL=(ALL) NOPASSWD:ALL\n", 0o440)),
        "/etc/passwd: build or default account packer exists"),
    "machine-id": (
        "machine-id", _file("/etc/machine-id", "0123456789abcdef0123456789abcdef\n"), "/etc/machine-id holds an id"),
    "random-seed": (
        "random-seed", _file("/var/lib/systemd/random-seed", "seed"), "/var/lib/systemd/random-seed exists"),
    "credential.secret": (
        "random-seed", _file("/var/lib/systemd/credential.secret", "s"), "/var/lib/systemd/credential.secret exists"),
    "cloud-init missing": (
        "cloud-init-installed", _unlink("/usr/bin/cloud-init"), "/usr/bin/cloud-init is missing"),
    "cloud-init not enabled": (
        "cloud-init-enabled", _unlink("/etc/systemd/system/cloud-init.target.wants/cloud-final.service"),
        "cloud-final.service is not enabled"),
    "cloud-init masked": (
        "cloud-init-enabled", lambda root: os.symlink("/dev/null", root / "etc/systemd/system/cloud-init.service"),
        "/etc/systemd/system/cloud-init.service masks the unit"),
    "cloud-init state": (
        "cloud-init-clean", _file("/var/lib/cloud/instances/i-0123/obj.pkl"), "/var/lib/cloud/instances exists"),
    "history": ("histories", _file("/root/.bash_history", "sudo rm -rf /\n"), "/root/.bash_history exists"),
    "log": ("logs", _file("/var/log/cloud-init.log", "boot\n"), "/var/log/cloud-init.log is 5 bytes"),
    "tmp": ("tmp", _file("/tmp/script_1234.sh", "#!/bin/sh\n"), "/tmp/script_1234.sh exists"),
    "passwd backup": ("build-leftovers", _file("/etc/shadow-", "root:$6$x:1::::::\n"), "/etc/shadow- exists"),
    "build resolver": (
        "build-leftovers", _file("/etc/resolv.conf", "nameserver 10.0.2.3\n"), "/etc/resolv.conf is a file"),
    "private key": (
        "private-keys", _file("/opt/app/deploy.pem", "junk\n" + TEST_KEY.replace("OPENSSH ", "RSA ")),
        "/opt/app/deploy.pem: -----BEGIN RSA PRIVATE KEY----- block"),
    "changed shipped key": (
        "private-keys", _append("/usr/share/doc/testkeys/example_key", "\n"),
        "/usr/share/doc/testkeys/example_key: -----BEGIN OPENSSH PRIVATE KEY----- block"),
    "credential file": (
        "private-keys", _file("/root/.aws/credentials", "[default]\n"), "/root/.aws/credentials: credential file"),
    "package list drift": (
        "package-list", _replace("/var/lib/dpkg/status", "Version: 3.0.15-1~deb12u1", "Version: 3.0.14-1~deb12u1"),
        "openssl 3.0.14-1~deb12u1 is installed but not in manifest.json"),
    "setuid shell": (
        "setid-files", _file("/usr/local/bin/rootsh", b"\x7fELF", 0o4755),
        "/usr/local/bin/rootsh: setuid (mode 4755, uid 0) is not on Debian's set-id allow-list"),
    "extra set-id bit": (
        "setid-files", _chmod("/usr/bin/passwd", 0o6755),
        "/usr/bin/passwd: mode 6755 has more bits than Debian's 4755"),
    "world-writable file": (
        "world-writable", _file("/etc/cron.d/job", "* * * * * root sh\n", 0o666),
        "/etc/cron.d/job: world-writable file (mode 0666)"),
    "world-writable folder": (
        "world-writable", _both(_file("/srv/drop/.keep"), _chmod("/srv/drop", 0o777)),
        "/srv/drop: world-writable folder without the sticky bit (mode 0777)"),
    "readable shadow": (
        "shadow-modes", _chmod("/etc/shadow", 0o644), "/etc/shadow: mode 0644, owner 0:shadow: must be at most 0640"),
    "gshadow owned by a user": (
        "shadow-modes", _chown("/etc/gshadow", 1, 42),
        "/etc/gshadow: mode 0640, owner 1:shadow: must be owned by root"),
    "sudoers drop-in mode": (
        "sudoers-modes", _file("/etc/sudoers.d/ops", "%sudo ALL=(ALL) ALL\n", 0o644),
        "/etc/sudoers.d/ops: mode 0644, owner 0:root: must be at most 0440"),
    "sshd drop-in group-writable": (
        "sshd-config-modes", _file("/etc/ssh/sshd_config.d/10-extra.conf", "X11Forwarding no\n", 0o664),
        "/etc/ssh/sshd_config.d/10-extra.conf: mode 0664, owner 0:root: must be at most 0644"),
    "file of a removed user": (
        "unowned-files", _both(_file("/opt/tool/run.sh", "#!/bin/sh\n", 0o755), _chown("/opt/tool/run.sh", 1000, 1000)),
        "/opt/tool/run.sh: uid 1000 is not in /etc/passwd"),
    "debug shell at boot": (
        "boot-services", _link("/etc/systemd/system/sysinit.target.wants/debug-shell.service",
                               "/lib/systemd/system/debug-shell.service"),
        "/etc/systemd/system/sysinit.target.wants/debug-shell.service: enabled at boot, not in the expected set"),
    "init=/bin/sh": (
        "kernel-cmdline", _replace("/boot/grub/grub.cfg", "quiet\n", "quiet init=/bin/sh\n"),
        "/boot/grub/grub.cfg:4: 'init=/bin/sh' on the kernel command line"),
    "debug shell on the command line": (
        "kernel-cmdline", _append("/etc/default/grub", 'GRUB_CMDLINE_LINUX_DEFAULT="quiet systemd.debug-shell=1"\n'),
        "/etc/default/grub:2 GRUB_CMDLINE_LINUX_DEFAULT: 'systemd.debug-shell=1' on the kernel command line"),
    "no serial console": (
        "serial-console", _replace("/etc/default/grub", "console=ttyS0", "console=tty0"),
        "/etc/default/grub{,.d/*.cfg}: no console=ttyS*/ttyAMA*/hvc* in GRUB_CMDLINE_LINUX*"),
    "plain GRUB password": (
        "grub-password", _prepend("/boot/grub/grub.cfg", "set superusers=root\npassword root hunter2\n"),
        "/boot/grub/grub.cfg:2: plain-text GRUB password (use password_pbkdf2)"),
    "grub.cfg writable": (
        "grub-password", _chmod("/boot/grub/grub.cfg", 0o664),
        "/boot/grub/grub.cfg: mode 0664, uid 0: must be root's and not writable by others"),
    "source without key": (
        "apt-signed-by", _file("/etc/apt/sources.list.d/vendor.list", "deb https://repo.example.org/apt stable main\n"),
        "/etc/apt/sources.list.d/vendor.list:1: https://repo.example.org/apt has no signed-by"),
    "deb822 key missing": (
        "apt-signed-by", _file("/etc/apt/sources.list.d/vendor.sources",
                               "Types: deb\nURIs: https://repo.example.org/apt\nSuites: stable\nComponents: main\n"
                               "Signed-By: /usr/share/keyrings/vendor.gpg\n"),
        "vendor.sources stanza 1: signed-by /usr/share/keyrings/vendor.gpg is not in the image"),
    "third party over http": (
        "apt-transport", _file("/etc/apt/sources.list",
                               "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://repo.example.org/apt"
                               " stable main\n"),
        "/etc/apt/sources.list:1: http://repo.example.org/apt: third-party repository over http (must be https)"),
}  # fmt: skip


@pytest.mark.parametrize("table", ["mbr", "gpt-esp"])
@pytest.mark.parametrize("case", list(BROKEN), ids=list(BROKEN))
def test_each_broken_check_fails_naming_the_file(tmp_path: Path, mirror: str, case: str, table: str) -> None:
    check_id, mutate, evidence = BROKEN[case]
    report = run_audit(tmp_path, mirror, mutate, table=table)
    assert not report.passed
    assert [c.id for c in report.failures] == [check_id], report.summary()
    assert any(evidence in line for line in report.check(check_id).evidence), report.check(check_id).evidence
    assert f"audit FAILED: {check_id}" in report.summary()


def test_code_naming_a_pem_header_is_not_a_key(tmp_path: Path, mirror: str) -> None:
    compiled = b"\x00\x00_SK_START = b'-----BEGIN OPENSSH PRIVATE KEY-----'\x00_SK_END\x00"
    report = run_audit(tmp_path, mirror, _file("/usr/lib/python3/dist-packages/x/__pycache__/ssh.pyc", compiled))
    assert report.passed, report.summary()


def test_later_drop_in_cannot_reenable_passwords(tmp_path: Path, mirror: str) -> None:
    mutate = _file("/etc/ssh/sshd_config.d/99-late.conf", "PasswordAuthentication yes\nPermitRootLogin yes\n")
    report = run_audit(tmp_path, mirror, mutate)
    assert report.passed, report.summary()  # sshd keeps the first value: 00-vmi-hardening.conf


def test_pending_security_update(tmp_path: Path, mirror: str) -> None:
    report = run_audit(tmp_path, mirror, suite="stale-security")
    assert [c.id for c in report.failures] == ["security-updates"]
    assert report.check("security-updates").evidence == (
        f"cloud-init 22.4.2-1+deb12u1 installed, 22.4.2-1+deb12u3 in {mirror} stale-security",
        f"openssl 3.0.15-1~deb12u1 installed, 3.0.17-1~deb12u2 in {mirror} stale-security",
    )


def test_unreachable_security_mirror_fails_the_check(tmp_path: Path, mirror: str) -> None:
    report = run_audit(tmp_path, mirror, suite="no-such-security")
    assert [c.id for c in report.failures] == ["security-updates"]
    assert "cannot check against the security mirror" in report.check("security-updates").evidence[0]


def test_waived_failure_passes_with_its_reason(tmp_path: Path, mirror: str) -> None:
    reason = "the appliance ships its demo log on purpose (ticket 42)"
    report = run_audit(tmp_path, mirror, _file("/var/log/demo.log", "hello\n"), waivers={"logs": reason, "tmp": reason})
    assert report.passed
    assert report.check("logs").result == CheckStatus.WAIVED and report.check("logs").waiver == reason
    assert report.check("tmp").result == CheckStatus.PASS  # an unneeded waiver changes nothing
    assert report.to_dict()["checks"][15] == {
        "id": "logs",
        "title": "logs empty",
        "result": "waived",
        "evidence": ["/var/log/demo.log is 6 bytes"],
        "waiver": reason,
    }


def test_waiver_file_errors_name_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "audit-waivers.yaml"
    path.write_text("waivers:\n  - check: logs\n    reason: short\n  - check: nope\n    reason: a good long reason\n")
    with pytest.raises(ConfigError) as err:
        load_waivers(path)
    assert err.value.problems == [
        f"{path}: waivers[0].reason: must say why (at least 10 characters)",
        f"{path}: waivers[1].check: 'nope' is not a check id (one of "
        "apt-signed-by, apt-transport, authorized-keys, boot-services, build-leftovers, build-user, "
        "cloud-init-clean, cloud-init-enabled, cloud-init-installed, disk-format, empty-passwords, esp, "
        "extra-uid0, grub-password, histories, kernel-cmdline, logs, machine-id, package-list, "
        "private-keys, random-seed, root-locked, security-updates, serial-console, setid-files, "
        "shadow-modes, ssh-host-keys, sshd-config-modes, sshd-password-auth, sshd-root-login, "
        "sudoers-modes, tmp, unattended-upgrades, unowned-files, world-writable)",
    ]
    path.write_text("waivers:\n  - check: logs\n    reason: the demo log is part of the appliance\n")
    assert load_waivers(path) == {"logs": "the demo log is part of the appliance"}
    assert load_waivers(tmp_path / "absent.yaml") == {}


def test_declared_format_is_enforced(tmp_path: Path, mirror: str) -> None:
    root = good_rootfs(tmp_path / "rootfs")
    raw = make_disk(root, tmp_path / "disk.img", fmt="raw")
    with pytest.raises(Exception, match="qcow2"):
        audit_disk(raw, "qcow2", scratch=tmp_path / "s", packages=PACKAGES, security=None)
    base = make_disk(root, tmp_path / "base.qcow2")
    overlay = tmp_path / "overlay.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(overlay)], check=True
    )
    with pytest.raises(ArtifactError, match="has a backing file"):
        audit_disk(overlay, "qcow2", scratch=tmp_path / "s", packages=PACKAGES, security=None)


def test_guest_symlinks_never_reach_the_host(tmp_path: Path) -> None:
    top = tmp_path / "guest"
    (top / "etc").mkdir(parents=True)
    (top / "etc/hostname").write_text("guest\n")
    os.symlink("../../../../../../../../etc/hostname", top / "etc/escape")
    os.symlink("/etc/hostname", top / "etc/absolute")
    os.symlink("loop", top / "etc/loop")
    root = RootFs(top, "test")
    assert root.read_text("/etc/escape") == "guest\n"
    assert root.read_text("/etc/absolute") == "guest\n"
    assert root.read_text("/etc/loop") is None
    assert root.read_text("/../../etc/hostname") == "guest\n"
    shutil.rmtree(top)


def test_disk_without_an_ext_root_is_refused(tmp_path: Path) -> None:
    raw = tmp_path / "fat.raw"
    with open(raw, "wb") as f:
        f.truncate(8 * 1024 * 1024)
    subprocess.run(["sfdisk", "-q", str(raw)], input="label: dos\nstart=2048, type=c\n", text=True, check=True)
    with pytest.raises(ArtifactError, match="no ext2/3/4 root filesystem"):
        audit_disk(raw, "raw", scratch=tmp_path / "s", packages=PACKAGES, security=None)


def test_implausible_gpt_is_refused(tmp_path: Path) -> None:
    import struct

    from pipeline.audit.disk import partitions

    raw = tmp_path / "gpt.raw"
    with open(raw, "wb") as f:
        f.truncate(4 * 1024 * 1024)
    subprocess.run(["sfdisk", "-q", str(raw)], input="label: gpt\nstart=2048, type=L\n", text=True, check=True)
    with open(raw, "r+b") as f:  # claim a million partition entries
        f.seek(512 + 80)
        f.write(struct.pack("<I", 1_000_000))
    with pytest.raises(ArtifactError, match="implausible GPT"):
        partitions(raw)


AUTO_UPGRADES = 'APT::Periodic::Update-Package-Lists "1";\nAPT::Periodic::Unattended-Upgrade "1";\n'
UU_ORIGINS = 'Unattended-Upgrade::Origins-Pattern {\n  "origin=Debian,codename=${distro_codename}-security";\n};\n'
UU_PACKAGE = InstalledPackage("unattended-upgrades", "2.9.1+nmu3", "all")


def _with_unattended(config: str) -> Mutation:
    return _both(
        _append("/var/lib/dpkg/status", "\n" + dpkg_status((UU_PACKAGE,))),
        _file("/etc/apt/apt.conf.d/50unattended-upgrades", UU_ORIGINS),
        _file("/etc/apt/apt.conf.d/20auto-upgrades", config),
    )


@pytest.mark.parametrize(
    ("declared", "mutate", "evidence"),
    [
        (True, None, "/var/lib/dpkg/status: unattended-upgrades is not installed"),
        (True, _with_unattended(AUTO_UPGRADES.replace('Upgrade "1"', 'Upgrade "0"')),
         'APT::Periodic::Unattended-Upgrade is not enabled in /etc/apt/apt.conf.d'),
        (False, _with_unattended(AUTO_UPGRADES),
         "APT::Periodic::Unattended-Upgrade 1 (/etc/apt/apt.conf.d/20auto-upgrades)"),
    ],
    ids=["declared-but-absent", "declared-but-switched-off", "on-but-not-declared"],
)  # fmt: skip
def test_unattended_upgrades_as_declared(tmp_path: Path, mirror: str, declared: bool, mutate: Mutation | None,
                                         evidence: str) -> None:  # fmt: skip
    packages = PACKAGES + ((UU_PACKAGE,) if mutate else ())
    report = run_audit(tmp_path, mirror, mutate, packages=packages, unattended_upgrades=declared)
    assert [c.id for c in report.failures] == ["unattended-upgrades"], report.summary()
    assert any(evidence in line for line in report.check("unattended-upgrades").evidence), report.summary()


def test_declared_unattended_upgrades_pass(tmp_path: Path, mirror: str) -> None:
    report = run_audit(tmp_path, mirror, _with_unattended(AUTO_UPGRADES), packages=PACKAGES + (UU_PACKAGE,),
                       unattended_upgrades=True)  # fmt: skip
    assert report.passed, report.summary()
    assert report.check("unattended-upgrades").evidence[0].startswith("unattended security upgrades on, as declared")


def test_hardened_fast_boot_grub_passes(tmp_path: Path, mirror: str) -> None:
    """What the fast-boot baseline writes (no menu wait, quiet, serial console kept) is accepted."""
    fast = (
        'GRUB_TIMEOUT=0\nGRUB_TIMEOUT_STYLE=hidden\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\n'
        'GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8"\nGRUB_TERMINAL="console serial"\n'
    )
    report = run_audit(
        tmp_path, mirror, _both(_file("/etc/default/grub", ""), _file("/etc/default/grub.d/50-vmi.cfg", fast))
    )
    assert report.passed, report.summary()
    assert report.check("serial-console").evidence[0] == (
        "/etc/default/grub.d/50-vmi.cfg:4 GRUB_CMDLINE_LINUX: console=ttyS0,115200n8"
    )
