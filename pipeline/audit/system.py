"""Boot and update checks: what starts at boot, how the kernel is started, where packages come from,
and whether the image updates itself as its appliance declares.

Decisions (a cloud image, not a laptop): GRUB needs no password. Whoever reaches a cloud VM's console
already controls its hypervisor and disk, a password would not stop them and would block a
non-interactive boot; what matters is that the kernel command line opens no shell or debug door on
the default entries, that a password, if set, is hashed, and that the serial console the cloud logs
show is configured (GRUB_TIMEOUT=0 and ``quiet`` are fine). Debian's "recovery mode" entries may
carry ``single``: they are only reachable by hand from that console.
"""

from __future__ import annotations

import re
import shlex
import stat
from urllib.parse import urlsplit

from debian.deb822 import Deb822

from pipeline.audit.policy import AuditContext, Finding, failed, passed, verdict

# Units an appliance may enable at boot (symlinks in /etc/systemd/system/*.wants|*.requires): the
# Debian cloud base, cloud-init, ssh, time, logging, updates. Anything else (a debug shell, telnet,
# rpcbind, a mail or web server) is a service nobody asked the audit to accept.
EXPECTED_UNITS = {
    "ssh.service", "sshd.service", "ssh.socket", "networking.service", "systemd-networkd.service",
    "systemd-networkd-wait-online.service", "systemd-networkd.socket", "systemd-resolved.service",
    "systemd-timesyncd.service", "chrony.service", "systemd-pstore.service", "remote-fs.target",
    "e2scrub_reap.service", "e2scrub_all.timer", "fstrim.timer", "dpkg-db-backup.timer", "apt-daily.timer",
    "apt-daily-upgrade.timer", "unattended-upgrades.service", "getty@.service", "getty@tty1.service",
    "serial-getty@ttyS0.service", "serial-getty@ttyAMA0.service", "cron.service", "rsyslog.service",
    "dbus.service", "qemu-guest-agent.service", "cloud-init-local.service", "cloud-init.service",
    "cloud-init-network.service", "cloud-config.service", "cloud-final.service", "cloud-init-main.service",
    "cloud-init-hotplugd.socket", "cloud-init.target", "systemd-networkd-wait-online.target",
    "systemd-network-generator.service", "haveged.service", "logrotate.timer", "man-db.timer",
    "systemd-userdbd.socket", "systemd-homed.service", "systemd-growfs-root.service",
    # Debian 13: grub-common records a successful boot (GRUB's recordfail, for GRUB_TIMEOUT=0 menus);
    # sshd-keygen makes the host keys the seal removed, on first boot
    "grub-common.service", "sshd-keygen.service",
}  # fmt: skip
UNIT_ROOT = "/etc/systemd/system"


def boot_services(ctx: AuditContext) -> Finding:
    problems, enabled = [], set()
    for folder in ctx.root.listdir(UNIT_ROOT):
        if not folder.endswith((".wants", ".requires")):
            continue
        for unit in ctx.root.listdir(f"{UNIT_ROOT}/{folder}"):
            enabled.add(unit)
            if unit not in EXPECTED_UNITS:
                problems.append(f"{UNIT_ROOT}/{folder}/{unit}: enabled at boot, not in the expected set")
    return verdict(problems, f"{len(enabled)} units enabled at boot, all expected: {', '.join(sorted(enabled))}")


# --- kernel command line and GRUB ----------------------------------------------------------------

GRUB_DEFAULTS = "/etc/default/grub"
GRUB_CFG = ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg")
CMDLINE_VAR = re.compile(r"^\s*(GRUB_CMDLINE_LINUX(?:_DEFAULT)?)=(.*)$")
# shells, debug doors and disabled protections; "name=" entries match any value
FORBIDDEN = {
    "init=", "rdinit=", "single", "s", "S", "1", "emergency", "rescue", "-b", "rd.break", "rd.shell",
    "rd.emergency=", "systemd.debug-shell", "systemd.debug_shell", "systemd.debug-shell=", "systemd.debug_shell=",
    "selinux=0", "enforcing=0", "apparmor=0", "security=none", "mitigations=off", "nokaslr", "nosmep", "nosmap",
    "module.sig_enforce=0", "lockdown=none",
}  # fmt: skip
FORBIDDEN_UNITS = ("rescue.target", "emergency.target", "rescue", "emergency")
SERIAL = re.compile(r"^console=(ttyS\d+|ttyAMA\d+|hvc\d+)")


def _grub_cfg(ctx: AuditContext) -> str | None:
    return next((p for p in GRUB_CFG if ctx.root.lstat(p) is not None), None)


def command_lines(ctx: AuditContext) -> list[tuple[str, list[str], bool]]:
    """(where, tokens, recovery entry?) for every kernel command line the image defines: GRUB's
    defaults and drop-ins, the generated grub.cfg's ``linux`` lines, /etc/kernel/cmdline."""
    found = []
    for path in [GRUB_DEFAULTS] + [f"/etc/default/grub.d/{n}" for n in ctx.root.listdir("/etc/default/grub.d")]:
        for n, line in enumerate((ctx.root.read_text(path) or "").splitlines(), 1):
            if m := CMDLINE_VAR.match(line):
                try:
                    value = " ".join(shlex.split(m.group(2), comments=True))
                except ValueError:
                    value = m.group(2)
                found.append((f"{path}:{n} {m.group(1)}", value.split(), False))
    cfg = _grub_cfg(ctx)
    recovery = False
    for n, line in enumerate((ctx.root.read_text(cfg) or "").splitlines() if cfg else [], 1):
        words = line.split()
        if words[:1] in (["menuentry"], ["submenu"]):
            recovery = "recovery mode" in line
        elif words[:1] in (["linux"], ["linuxefi"], ["linux16"]):
            found.append((f"{cfg}:{n}", words[2:], recovery))
    kernel = ctx.root.read_text("/etc/kernel/cmdline")
    if kernel is not None:
        found.append(("/etc/kernel/cmdline", kernel.split(), False))
    return found


def _forbidden(token: str) -> bool:
    name = token.split("=", 1)[0] + "=" if "=" in token else token
    if token.startswith("systemd.unit=") and token.split("=", 1)[1] in FORBIDDEN_UNITS:
        return True
    return token in FORBIDDEN or name in FORBIDDEN


def kernel_cmdline(ctx: AuditContext) -> Finding:
    lines = command_lines(ctx)
    if not lines:
        return failed(f"no kernel command line found ({GRUB_DEFAULTS}, {', '.join(GRUB_CFG)}, /etc/kernel/cmdline)")
    problems = []
    for where, tokens, recovery in lines:
        bad = [t for t in tokens if _forbidden(t) and not (recovery and t == "single")]
        problems += [f"{where}: {t!r} on the kernel command line (a shell or a disabled protection)" for t in bad]
    return verdict(problems, f"{len(lines)} command lines without shell or debug options (first: {lines[0][0]})")


def serial_console(ctx: AuditContext) -> Finding:
    """The kernel logs to the serial console clouds show (console=ttyS0/ttyAMA0/hvc0), in GRUB's
    defaults (so a kernel update keeps it) and in every generated entry."""
    lines = command_lines(ctx)
    defaults = [(w, t) for w, t, _r in lines if w.startswith("/etc/")]
    entries = [(w, t) for w, t, _r in lines if not w.startswith("/etc/")]
    problems, evidence = [], []
    if not defaults or not any(SERIAL.match(t) for _w, ts in defaults for t in ts):
        problems.append(f"{GRUB_DEFAULTS}{{,.d/*.cfg}}: no console=ttyS*/ttyAMA*/hvc* in GRUB_CMDLINE_LINUX*")
    else:
        evidence.append(next(f"{w}: {t}" for w, ts in defaults for t in ts if SERIAL.match(t)))
    for where, tokens in entries:
        if not any(SERIAL.match(t) for t in tokens):
            problems.append(f"{where}: kernel entry without a serial console=")
    evidence.append(f"{len(entries)} grub.cfg entries with a serial console")
    return failed(*problems) if problems else passed(*evidence)


PLAIN_PASSWORD = re.compile(r"^\s*password\s+\S+\s+\S+")


def grub_password(ctx: AuditContext) -> Finding:
    """No plain-text GRUB password; a hashed one keeps grub.cfg unreadable to others; grub.cfg is root's."""
    problems, evidence = [], []
    cfg = _grub_cfg(ctx)
    sources = ([cfg] if cfg else []) + [f"/etc/grub.d/{n}" for n in ctx.root.listdir("/etc/grub.d")]
    hashed = False
    for path in sources:
        for n, line in enumerate((ctx.root.read_text(path) or "").splitlines(), 1):
            if PLAIN_PASSWORD.match(line):
                problems.append(f"{path}:{n}: plain-text GRUB password (use password_pbkdf2)")
            hashed = hashed or line.lstrip().startswith("password_pbkdf2")
    if cfg:
        st = ctx.root.lstat(cfg)
        assert st is not None
        mode = stat.S_IMODE(st.st_mode)
        evidence.append(f"{cfg}: mode {mode:04o}, uid {st.st_uid}")
        if st.st_uid != 0 or mode & 0o022:
            problems.append(f"{cfg}: mode {mode:04o}, uid {st.st_uid}: must be root's and not writable by others")
        if hashed and mode & 0o004:
            problems.append(f"{cfg}: mode {mode:04o} lets every user read the password hash")
    evidence.append(
        "password hashed (password_pbkdf2)" if hashed else "no GRUB password (a cloud VM's console is its owner's)"
    )
    return failed(*problems) if problems else passed(*evidence)


# --- apt sources ---------------------------------------------------------------------------------

SOURCES_DIR = "/etc/apt/sources.list.d"
# Debian's and Ubuntu's own archives may use http: apt checks every index against the archive's key.
# Any other host is a third party and must be reached over https.
OFFICIAL_HOSTS = re.compile(r"^(deb|security|ftp\.[a-z]{2}|cdn-fastly\.deb|archive|security\.ubuntu|ports\.ubuntu|"
                            r"[a-z]{2}\.archive\.ubuntu)\.(debian\.org|ubuntu\.com)$")  # fmt: skip
ONE_LINE = re.compile(r"^(deb|deb-src)\s+(?:\[([^\]]*)\]\s+)?(\S+)")


def apt_sources(ctx: AuditContext) -> list[tuple[str, str, str | None]]:
    """(where, URI, signed-by or None) of every source: one-line ``.list`` files and deb822 ``.sources``."""
    found: list[tuple[str, str, str | None]] = []
    lists = ["/etc/apt/sources.list"] + [
        f"{SOURCES_DIR}/{n}" for n in ctx.root.listdir(SOURCES_DIR) if n.endswith(".list")
    ]
    for path in lists:
        for n, line in enumerate((ctx.root.read_text(path) or "").splitlines(), 1):
            if m := ONE_LINE.match(line.strip()):
                options = dict(o.split("=", 1) for o in (m.group(2) or "").split() if "=" in o)
                found.append((f"{path}:{n}", m.group(3), options.get("signed-by")))
    for name in ctx.root.listdir(SOURCES_DIR):
        if not name.endswith(".sources"):
            continue
        path = f"{SOURCES_DIR}/{name}"
        for n, para in enumerate(Deb822.iter_paragraphs(ctx.root.read_text(path) or ""), 1):
            if para.get("Enabled", "yes").strip().lower() == "no":
                continue
            for uri in para.get("URIs", "").split():
                found.append((f"{path} stanza {n}", uri, para.get("Signed-By")))
    return found


def apt_signed_by(ctx: AuditContext) -> Finding:
    """Every source names the key that signs it, and the key is in the image (a key in trusted.gpg.d
    would otherwise vouch for every repository)."""
    sources = apt_sources(ctx)
    problems = []
    for where, uri, signed_by in sources:
        if not signed_by:
            problems.append(f"{where}: {uri} has no signed-by")
        elif signed_by.strip().startswith("/") and "\n" not in signed_by.strip():
            if not ctx.root.is_file(signed_by.strip()):
                problems.append(f"{where}: signed-by {signed_by.strip()} is not in the image")
    return verdict(problems, f"{len(sources)} apt sources, each with its key: " + ", ".join(w for w, _u, _s in sources))


def apt_transport(ctx: AuditContext) -> Finding:
    sources = apt_sources(ctx)
    problems = []
    for where, uri, _signed in sources:
        parts = urlsplit(uri)
        if parts.scheme in ("https", "file", "cdrom"):
            continue
        if parts.scheme == "http" and OFFICIAL_HOSTS.match(parts.hostname or ""):
            continue
        problems.append(f"{where}: {uri}: third-party repository over {parts.scheme or 'no scheme'} (must be https)")
    return verdict(problems, f"{len(sources)} apt sources: Debian/Ubuntu archives or https")


# --- unattended upgrades -------------------------------------------------------------------------

APT_CONF = "/etc/apt/apt.conf.d"
PERIODIC = re.compile(r'^\s*APT::Periodic::(Unattended-Upgrade|Update-Package-Lists)\s+"?(\w+)"?\s*;', re.M)


def unattended_upgrades(ctx: AuditContext) -> Finding:
    """Security updates install themselves exactly when the appliance declares ``unattended_upgrades``:
    the package, APT::Periodic's switches (the last file in apt.conf.d order wins), security origins."""
    settings: dict[str, tuple[str, str]] = {}
    for name in ctx.root.listdir(APT_CONF):
        for key, value in PERIODIC.findall(ctx.root.read_text(f"{APT_CONF}/{name}") or ""):
            settings[key] = (value, f"{APT_CONF}/{name}")
    on = {k: v[0] not in ("0", "false", "no") for k, v in settings.items()}
    installed = "unattended-upgrades" in ctx.dpkg_installed
    where = "; ".join(f"APT::Periodic::{k} {v} ({f})" for k, (v, f) in sorted(settings.items())) or "no APT::Periodic"
    enabled = installed and on.get("Unattended-Upgrade", False)
    if not ctx.unattended_upgrades:
        if enabled:
            return failed(f"{where}: unattended-upgrades is on, but the appliance does not declare unattended_upgrades")
        return passed(f"unattended upgrades off, as declared ({where})")
    problems = [] if installed else ["/var/lib/dpkg/status: unattended-upgrades is not installed"]
    for key in ("Update-Package-Lists", "Unattended-Upgrade"):
        if not on.get(key, False):
            problems.append(f"APT::Periodic::{key} is not enabled in {APT_CONF} ({where})")
    origins = "".join(
        ctx.root.read_text(f"{APT_CONF}/{n}") or "" for n in ctx.root.listdir(APT_CONF) if "unattended" in n
    )
    if "security" not in origins.lower():
        problems.append(f"{APT_CONF}/50unattended-upgrades: no security origin configured")
    return verdict(problems, f"unattended security upgrades on, as declared ({where})")
