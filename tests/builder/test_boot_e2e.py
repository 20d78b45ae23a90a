"""End to end: the reference image, built with real Packer + QEMU, boots on a NoCloud "cloud" the way
a site would run it: cloud-init runs the user's script and installs the user's key for ``debian``;
key login works, password login and root login do not; the build leftovers are gone."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from pipeline.builder.accel import Accel
from pipeline.builder.seed import generate_ssh_key, meta_data, multipart_user_data, write_seed_iso
from pipeline.manifest import BuildManifest

from .guest import SSH_OPTIONS, boot, virtual_size

pytestmark = [pytest.mark.slow, pytest.mark.build]

MARKER = "/var/lib/vmi-e2e/user-data-ran"
USER_SCRIPT = f"""#!/bin/sh
set -eu
mkdir -p {MARKER.rsplit("/", 1)[0]}
echo "user-data script ran as $(id -un)" > {MARKER}
"""


def test_built_image_boots_with_cloud_init_and_key_only_ssh(
    reference_build: tuple[Path, BuildManifest], tmp_path: Path
) -> None:
    version_dir, manifest = reference_build
    boots_like_a_cloud_guest(version_dir / manifest.artifact("build-disk").name, tmp_path, "bios")


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_debian_13_hybrid_boots_under_seabios_and_ovmf(
    reference_build_13: tuple[Path, BuildManifest], tmp_path: Path, firmware: str
) -> None:
    version_dir, manifest = reference_build_13
    guest_firmware = boots_like_a_cloud_guest(version_dir / manifest.artifact("build-disk").name, tmp_path, firmware)
    assert guest_firmware == ("efi" if firmware == "uefi" else "bios")


def boots_like_a_cloud_guest(disk: Path, tmp_path: Path, firmware: str) -> str:
    """Boot ``disk`` under ``firmware`` with a NoCloud seed and check what a site relies on; returns the
    firmware the guest itself saw (``efi`` if /sys/firmware/efi exists, else ``bios``)."""
    key = generate_ssh_key(tmp_path / "key", comment="e2e-user")
    # NoCloud takes the user's public key from meta-data, as clouds pass it outside user-data
    meta = meta_data("e2e-instance-1", "e2e-guest", public_keys=(key.public_text,))
    user_data = multipart_user_data([("x-shellscript", USER_SCRIPT)])
    seed = write_seed_iso(tmp_path / "seed.iso", meta, user_data)

    with boot(disk, seed, key.private, tmp_path, firmware=firmware) as guest:
        guest.wait_for_ssh("debian", deadline_s=900)
        # measured, not asserted: bench/boot_timing.py --smoke prints what the boot tests recorded
        guest.timing("debian").record(disk.name)

        status = guest.ssh("debian", "cloud-init status --wait --long", timeout=600)
        assert "status: done" in status.stdout, status.stdout + status.stderr

        # the root partition and file system grew into the larger disk (cloud-init's config stage
        # does it, once sshd listens): the file system is now larger than the whole image
        root_size = guest.ssh("debian", "df -B1 --output=size / | tail -1")
        assert root_size.returncode == 0, root_size.stderr
        assert int(root_size.stdout) > virtual_size(disk), (root_size.stdout, virtual_size(disk))
        order = guest.ssh(
            "debian",
            "systemctl show -P ActiveEnterTimestampMonotonic ssh.service; "
            "systemctl show -P InactiveExitTimestampMonotonic cloud-config.service",
        )
        sshd_ready, config_started = (int(line) for line in order.stdout.split())
        assert 0 < sshd_ready <= config_started, order.stdout

        # what the image does to boot sooner took effect (bench/README.md): the initramfs checked the
        # root (so systemd skipped its own, later check) and GRUB reads keys from the console only
        boot_path = guest.ssh(
            "debian",
            "sudo -n test -e /run/initramfs/fsck-root && echo initramfs-checked-root; "
            "systemctl show -P ConditionResult systemd-fsck-root.service; "
            "sudo -n grep -E '^terminal_(input|output) ' /boot/grub/grub.cfg; "
            "/lib64/ld-linux-x86-64.so.2 --help",
        )
        assert boot_path.stdout.splitlines()[:4] == [
            "initramfs-checked-root",
            "no",
            "terminal_input console",
            "terminal_output console serial",
        ], boot_path.stdout + boot_path.stderr
        # the emulated CPU (TCG_CPU_MODEL), like any host CPU KVM passes through, runs x86-64-v2 code
        # (AlmaLinux 9 needs it), as the guest's own glibc sees it
        assert re.search(r"^\s*x86-64-v2 \(supported", boot_path.stdout, re.M), boot_path.stdout
        # the CPU offers RDRAND (pipeline.builder.accel.TCG_CPU_MODEL under TCG): the kernel's random pool
        # is ready before userspace starts, so nothing in the boot waits for entropy (without it: ~17 s)
        entropy = guest.ssh(
            "debian",
            "sudo -n dmesg | grep -m1 'random: crng init done'; systemctl show -P UserspaceTimestampMonotonic",
        )
        crng_line, userspace_us = entropy.stdout.splitlines()
        crng_at = re.match(r"\[\s*([\d.]+)\]", crng_line)
        assert crng_at and float(crng_at.group(1)) < int(userspace_us) / 1e6, entropy.stdout
        if guest.accel is Accel.TCG:
            # no nested virtualisation offered to an emulated guest: it loads no kvm module for it
            cpu = guest.ssh("debian", "grep -m1 '^flags' /proc/cpuinfo; lsmod | grep -c '^kvm' || true")
            flags, kvm_modules = cpu.stdout.splitlines()
            assert "svm" not in flags.split() and "vmx" not in flags.split() and kvm_modules == "0", cpu.stdout

        ran = guest.ssh("debian", f"cat {MARKER}")
        assert ran.returncode == 0 and "user-data script ran as root" in ran.stdout, ran.stderr

        # the server offers public keys only: a password attempt is not even possible
        pw = subprocess.run(
            ["ssh", *SSH_OPTIONS, "-v", "-o", "PubkeyAuthentication=no",
             "-o", "PreferredAuthentications=password,keyboard-interactive",
             "-p", str(guest.port), "debian@127.0.0.1", "true"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert pw.returncode == 255
        offered = re.findall(r"Authentications that can continue: (\S+)", pw.stderr)
        assert offered and all(m == "publickey" for m in offered), pw.stderr

        # root is refused even with the key cloud-init placed for it (disable_root) by sshd itself
        root = guest.ssh("root", "id -u")
        assert root.returncode == 255 and "Permission denied" in root.stderr, root.stdout + root.stderr

        checks = guest.ssh(
            "debian",
            "sudo -n sshd -T | grep -E '^(permitrootlogin|passwordauthentication) '; "
            "getent passwd vmi-build || echo no-build-user; "
            "sudo -n passwd -S root | cut -d' ' -f2; "
            "test -s /etc/machine-id && echo machine-id-set; "
            "ls /etc/ssh/ssh_host_ed25519_key.pub",
        )
        out = checks.stdout
        assert "permitrootlogin no" in out and "passwordauthentication no" in out, out
        assert "no-build-user" in out, out
        assert "\nL\n" in out, out
        assert "machine-id-set" in out and "ssh_host_ed25519_key.pub" in out, out
        # sshd starts without a test run before it, yet a broken configuration still never replaces the
        # running one: the reload tests it first and fails, sshd keeps serving the old one
        broken = guest.ssh(
            "debian",
            "systemctl show -p ExecStartPre --value ssh.service | grep -c 'sshd -t' || true; "
            "echo 'NoSuchSshdOption yes' | sudo -n tee /etc/ssh/sshd_config.d/99-e2e-broken.conf >/dev/null; "
            "sudo -n systemctl reload ssh.service 2>/dev/null; echo reload=$?; "
            "sudo -n rm /etc/ssh/sshd_config.d/99-e2e-broken.conf; systemctl is-active ssh.service",
        )
        assert broken.returncode == 0, broken.stderr
        pretests, reload, active = broken.stdout.split()
        assert pretests == "0" and reload != "reload=0" and active == "active", broken.stdout
        assert guest.ssh("debian", "true").returncode == 0  # still serving after the failed reload

        seen = guest.ssh("debian", "test -d /sys/firmware/efi && echo efi || echo bios")
        return seen.stdout.strip()
