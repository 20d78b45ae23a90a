"""The audit's checks in the order they run and report: each a stable id (waivers and the catalogue
refer to it), a title, and the function that judges it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pipeline.audit import hardening, policy, system
from pipeline.audit.policy import AuditContext, Finding


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    run: Callable[[AuditContext], Finding]


CHECKS = (
    Check("ssh-host-keys", "no SSH host keys", policy.no_host_keys),
    Check("authorized-keys", "no authorized_keys anywhere", policy.no_authorized_keys),
    Check("sshd-root-login", "sshd refuses root logins (effective setting)", policy.sshd_no_root_login),
    Check("sshd-password-auth", "sshd refuses passwords (effective settings)", policy.sshd_no_password_auth),
    Check("root-locked", "root password locked", policy.root_locked),
    Check("empty-passwords", "no empty passwords", policy.no_empty_passwords),
    Check("extra-uid0", "no UID 0 account but root", policy.only_root_uid0),
    Check("build-user", "no build or regular user left", policy.no_build_user),
    Check("machine-id", "machine-id empty", policy.machine_id_empty),
    Check("random-seed", "no random-seed or credential.secret", policy.no_random_seed),
    Check("cloud-init-installed", "cloud-init installed", policy.cloud_init_installed),
    Check("cloud-init-enabled", "cloud-init enabled at boot", policy.cloud_init_enabled),
    Check("cloud-init-clean", "cloud-init state clean", policy.cloud_init_clean),
    Check("histories", "no shell histories", policy.no_histories),
    Check("logs", "logs empty", policy.logs_empty),
    Check("tmp", "/tmp and /var/tmp empty", policy.tmp_empty),
    Check("build-leftovers", "no build leftovers", policy.no_build_leftovers),
    Check("private-keys", "no private keys or credential files", policy.no_private_keys),
    Check("security-updates", "no pending security updates", policy.no_pending_security_updates),
    Check("package-list", "package list recorded", policy.package_list_recorded),
    Check("esp", "EFI system partition holds only the boot loader", policy.esp_contents),
    Check("setid-files", "set-id files only from Debian's allow-list", hardening.setid_files),
    Check("world-writable", "no world-writable files; world-writable folders sticky", hardening.world_writable),
    Check("shadow-modes", "/etc/shadow and /etc/gshadow root's, at most 0640", hardening.shadow_modes),
    Check("sudoers-modes", "sudoers and sudoers.d root's, at most 0440", hardening.sudoers_modes),
    Check("sshd-config-modes", "sshd configuration root's, not writable by others", hardening.sshd_config_modes),
    Check("unowned-files", "every file has a known owner and group", hardening.unowned_files),
    Check("boot-services", "only expected services enabled at boot", system.boot_services),
    Check("kernel-cmdline", "kernel command line opens no shell or debug door", system.kernel_cmdline),
    Check("serial-console", "kernel and GRUB use the serial console", system.serial_console),
    Check("grub-password", "no plain-text GRUB password; grub.cfg root's", system.grub_password),
    Check("apt-signed-by", "every apt source names its signing key", system.apt_signed_by),
    Check("apt-transport", "no third-party apt repository over plain HTTP", system.apt_transport),
    Check("unattended-upgrades", "unattended security upgrades as the appliance declares", system.unattended_upgrades),
)
CHECK_IDS = frozenset(c.id for c in CHECKS) | {"disk-format"}
