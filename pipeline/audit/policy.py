"""The endorsement policy as offline checks over a guest's root filesystem.

Each check has a stable id (waivers and the catalogue refer to it), a title, and returns a verdict
with evidence naming the files it looked at. Everything is parsed here from the guest's files;
nothing from the image is executed. Sources: EGI/HEPiX endorsement policy (no accounts, keys or
credentials; patched), virt-sysprep's defaults, systemd's "Safely Building Images", Debian's cloud
image tests (research: security-and-reliability.md §1.4).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field

from debian.deb822 import Deb822
from debian.debian_support import Version

from pipeline.audit.disk import RootFs
from pipeline.audit.sshd import read_sshd_config
from pipeline.manifest import InstalledPackage


@dataclass(frozen=True)
class Finding:
    ok: bool
    evidence: tuple[str, ...]


def passed(*evidence: str) -> Finding:
    return Finding(True, evidence)


def failed(*evidence: str) -> Finding:
    return Finding(False, evidence)


def verdict(problems: list[str], fine: str) -> Finding:
    return failed(*problems) if problems else passed(fine)


# (package name, architecture) -> newest version in the security suite
SecurityIndex = Mapping[tuple[str, str], str]


@dataclass
class AuditContext:
    """What the checks read: the guest tree, the manifest's package list, the security index (or why none)."""

    root: RootFs
    packages: tuple[InstalledPackage, ...] | None
    security_index: SecurityIndex | None = None
    security_source: str = ""
    security_error: str | None = None
    unattended_upgrades: bool = False  # what the appliance declares (its unattended_upgrades field)
    _entries: list[tuple[str, os.stat_result]] | None = field(default=None, repr=False)

    @property
    def entries(self) -> list[tuple[str, os.stat_result]]:
        """Every path in the guest, walked once."""
        if self._entries is None:
            self._entries = list(self.root.walk("/"))
        return self._entries

    @functools.cached_property
    def passwd(self) -> list[list[str]]:
        return _table(self.root.read_text("/etc/passwd"), 7)

    @functools.cached_property
    def group_names(self) -> dict[int, str]:
        """gid -> group name from /etc/group."""
        return {int(r[2]): r[0] for r in _table(self.root.read_text("/etc/group"), 4) if r[2].isdigit()}

    @functools.cached_property
    def shadow(self) -> list[list[str]]:
        return _table(self.root.read_text("/etc/shadow"), 9)

    @functools.cached_property
    def dpkg_installed(self) -> dict[str, tuple[str, str]]:
        """package name (with :arch for foreign ones) -> (version, architecture) from /var/lib/dpkg/status."""
        found = {}
        for para in Deb822.iter_paragraphs(self.root.read_text("/var/lib/dpkg/status") or ""):
            if para.get("Status", "").endswith(" installed") and "Package" in para:
                found[para["Package"]] = (para.get("Version", ""), para.get("Architecture", ""))
        return found

    @functools.cached_property
    def dpkg_md5sums(self) -> dict[str, str]:
        """Files shipped by installed packages -> their md5 (to tell shipped files from added ones)."""
        sums = {}
        for name in self.root.listdir("/var/lib/dpkg/info"):
            if name.endswith(".md5sums"):
                for line in (self.root.read_text(f"/var/lib/dpkg/info/{name}") or "").splitlines():
                    digest, _, path = line.partition("  ")
                    if path:
                        sums["/" + path.strip()] = digest
        return sums


def _table(text: str | None, width: int) -> list[list[str]]:
    rows = []
    for line in (text or "").splitlines():
        if line.strip() and not line.startswith("#"):
            fields = line.split(":")
            rows.append(fields + [""] * (width - len(fields)))
    return rows


# --- SSH -----------------------------------------------------------------------------------------


def no_host_keys(ctx: AuditContext) -> Finding:
    keys = [f"/etc/ssh/{n} exists" for n in ctx.root.listdir("/etc/ssh") if n.startswith("ssh_host_")]
    return verdict(keys, "/etc/ssh holds no ssh_host_* files")


def no_authorized_keys(ctx: AuditContext) -> Finding:
    found = [f"{p} exists" for p, _st in ctx.entries if p.rsplit("/", 1)[-1] in ("authorized_keys", "authorized_keys2")]
    return verdict(found, "no authorized_keys or authorized_keys2 file anywhere")


def _sshd_requirement(ctx: AuditContext, wanted: dict[str, str]) -> Finding:
    config = read_sshd_config(ctx.root)
    if config is None:
        return passed("no /etc/ssh/sshd_config: openssh-server is not installed")
    problems, evidence = list(config.problems), []
    for keyword, want in wanted.items():
        setting = config.effective(keyword)
        line = f"{keyword} {setting.value or '(empty)'} ({setting.where}, first match wins)"
        if setting.value == want:
            evidence.append(line)
        else:
            problems.append(f"{line}: must be {want}")
        for criteria, override in config.match_overrides(keyword):
            if override.value != want:
                problems.append(
                    f"{keyword} {override.value} inside 'Match {criteria}' ({override.where}): must be {want}"
                )
    return failed(*problems) if problems else passed(*evidence, "read: " + ", ".join(config.files))


def sshd_no_root_login(ctx: AuditContext) -> Finding:
    return _sshd_requirement(ctx, {"permitrootlogin": "no"})


def sshd_no_password_auth(ctx: AuditContext) -> Finding:
    return _sshd_requirement(
        ctx, {"passwordauthentication": "no", "kbdinteractiveauthentication": "no", "permitemptypasswords": "no"}
    )


# --- accounts ------------------------------------------------------------------------------------

BUILD_USERS = {"packer", "vagrant", "builder", "build", "ansible", "ubuntu", "debian", "cloud-user"}


def root_locked(ctx: AuditContext) -> Finding:
    rows = [r for r in ctx.shadow if r[0] == "root"]
    if not rows:
        return failed("/etc/shadow has no entry for root")
    password = rows[0][1]
    if password.startswith(("!", "*")):
        return passed(f"/etc/shadow: root password field starts with {password[0]!r} (locked)")
    return failed("/etc/shadow: root has a usable password (field does not start with '!' or '*')")


def no_empty_passwords(ctx: AuditContext) -> Finding:
    problems = [f"/etc/shadow: {r[0]} has an empty password field" for r in ctx.shadow if r[1] == ""]
    problems += [f"/etc/passwd: {r[0]} has an empty password field" for r in ctx.passwd if r[1] == ""]
    if not ctx.passwd:
        problems.append("/etc/passwd is missing or empty")
    return verdict(problems, f"{len(ctx.shadow)} /etc/shadow entries, none with an empty password")


def only_root_uid0(ctx: AuditContext) -> Finding:
    problems = [f"/etc/passwd: {r[0]} has UID 0" for r in ctx.passwd if r[2] == "0" and r[0] != "root"]
    names = [r[0] for r in ctx.passwd]
    problems += [
        f"/etc/passwd: user {n} appears {names.count(n)} times" for n in sorted(set(names)) if names.count(n) > 1
    ]
    return verdict(problems, "/etc/passwd: root is the only UID 0 account")


def no_build_user(ctx: AuditContext) -> Finding:
    problems = []
    for name, _pw, uid, *_rest in ctx.passwd:
        if name in BUILD_USERS:
            problems.append(f"/etc/passwd: build or default account {name} exists (cloud-init creates users at boot)")
        elif uid.isdigit() and 1000 <= int(uid) < 65534:
            problems.append(f"/etc/passwd: regular account {name} (UID {uid}) left in the image")
    problems += [f"/home/{n} exists" for n in ctx.root.listdir("/home")]
    for name in ctx.root.listdir("/etc/sudoers.d"):
        text = ctx.root.read_text(f"/etc/sudoers.d/{name}") or ""
        if any("NOPASSWD" in line and not line.lstrip().startswith("#") for line in text.splitlines()):
            problems.append(f"/etc/sudoers.d/{name} grants NOPASSWD sudo")
    return verdict(problems, "no regular or build accounts, no /home entries, no NOPASSWD sudoers drop-ins")


# --- machine identity ----------------------------------------------------------------------------


def machine_id_empty(ctx: AuditContext) -> Finding:
    problems = []
    content = ctx.root.read_text("/etc/machine-id")
    if content not in (None, "", "uninitialized\n"):
        problems.append("/etc/machine-id holds an id: every instance would share it")
    st = ctx.root.lstat("/var/lib/dbus/machine-id")
    if st is not None and stat.S_ISREG(st.st_mode) and st.st_size > 0:
        problems.append("/var/lib/dbus/machine-id holds an id")
    return verdict(problems, "/etc/machine-id is empty or absent; /var/lib/dbus/machine-id absent, empty or a symlink")


SEED_FILES = (
    "/var/lib/systemd/random-seed",
    "/var/lib/systemd/credential.secret",
    "/loader/random-seed",
    "/boot/efi/loader/random-seed",
    "/efi/loader/random-seed",
)


def no_random_seed(ctx: AuditContext) -> Finding:
    found = [f"{p} exists" for p in SEED_FILES if ctx.root.lstat(p) is not None]
    return verdict(found, "no random-seed or credential.secret: " + ", ".join(SEED_FILES))


# --- cloud-init ----------------------------------------------------------------------------------

CLOUD_INIT_UNITS = ("cloud-init-local.service", "cloud-init.service", "cloud-config.service", "cloud-final.service")
# cloud-init 24.3+ (Debian 13) renamed the network stage's unit
CLOUD_INIT_RENAMED = {"cloud-init.service": "cloud-init-network.service"}
UNIT_DIRS = ("/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")


def cloud_init_installed(ctx: AuditContext) -> Finding:
    version = ctx.dpkg_installed.get("cloud-init", ("", ""))[0]
    problems = [] if version else ["/var/lib/dpkg/status: cloud-init is not installed"]
    if not ctx.root.is_file("/usr/bin/cloud-init"):
        problems.append("/usr/bin/cloud-init is missing")
    return verdict(problems, f"cloud-init {version} installed (/var/lib/dpkg/status, /usr/bin/cloud-init)")


def cloud_init_enabled(ctx: AuditContext) -> Finding:
    problems, evidence = [], []
    wants = [d for d in ctx.root.listdir("/etc/systemd/system") if d.endswith(".wants")]
    for unit in CLOUD_INIT_UNITS:
        renamed = CLOUD_INIT_RENAMED.get(unit)
        if renamed and any(ctx.root.is_file(f"{d}/{renamed}") for d in UNIT_DIRS):
            unit = renamed
        target = ctx.root.host_path(f"/etc/systemd/system/{unit}", follow=False)
        if target is not None and target.is_symlink() and os.readlink(target) == "/dev/null":
            problems.append(f"/etc/systemd/system/{unit} masks the unit (-> /dev/null)")
            continue
        if not any(ctx.root.is_file(f"{d}/{unit}") for d in UNIT_DIRS):
            problems.append(f"{unit}: no unit file in {', '.join(UNIT_DIRS)}")
            continue
        links = [f"/etc/systemd/system/{w}/{unit}" for w in wants if ctx.root.lstat(f"/etc/systemd/system/{w}/{unit}")]
        if links:
            evidence.append(f"{links[0]} (enabled)")
        else:
            problems.append(f"{unit} is not enabled: no symlink in /etc/systemd/system/*.wants/")
    if ctx.root.lstat("/etc/cloud/cloud-init.disabled") is not None:
        problems.append("/etc/cloud/cloud-init.disabled exists")
    grub = ctx.root.read_text("/etc/default/grub") or ""
    if "cloud-init=disabled" in grub:
        problems.append("/etc/default/grub: the kernel command line disables cloud-init")
    return failed(*problems) if problems else passed(*evidence)


def cloud_init_clean(ctx: AuditContext) -> Finding:
    left = [f"/var/lib/cloud/{n} exists" for n in ctx.root.listdir("/var/lib/cloud")]
    return verdict(left, "/var/lib/cloud is empty: the first boot is a new instance")


# --- leftovers -----------------------------------------------------------------------------------

HISTORY_FILES = {
    ".bash_history", ".zsh_history", ".sh_history", ".ash_history", ".python_history", ".lesshst", ".viminfo",
    ".mysql_history", ".psql_history", ".sqlite_history", ".wget-hsts", ".node_repl_history",
}  # fmt: skip


def no_histories(ctx: AuditContext) -> Finding:
    found = [f"{p} exists" for p, _st in ctx.entries if p.rsplit("/", 1)[-1] in HISTORY_FILES]
    return verdict(found, "no shell, editor or REPL history files anywhere")


def logs_empty(ctx: AuditContext) -> Finding:
    found = [
        f"{p} is {st.st_size} bytes"
        for p, st in ctx.entries
        if p.startswith("/var/log/") and stat.S_ISREG(st.st_mode) and st.st_size > 0
    ]
    return verdict(found, "every file under /var/log is empty")


def tmp_empty(ctx: AuditContext) -> Finding:
    found = [f"{d}/{n} exists" for d in ("/tmp", "/var/tmp") for n in ctx.root.listdir(d)]
    return verdict(found, "/tmp and /var/tmp are empty")


LEFTOVER_FILES = (
    "/etc/passwd-", "/etc/shadow-", "/etc/group-", "/etc/gshadow-", "/etc/subuid-", "/etc/subgid-",
    "/etc/apt/sources.list.d/localdebs.list", "/etc/mailname", "/root/anaconda-ks.cfg",
    "/etc/udev/rules.d/70-persistent-net.rules",
)  # fmt: skip
LEFTOVER_PATTERNS = (
    ("/usr/bin", re.compile(r"^qemu-.*-static$")),
    ("/var/cache/apt/archives", re.compile(r"\.deb$")),
    ("/var/cache/apt", re.compile(r"\.bin$")),
    ("/var/lib/dhcp", re.compile(r"\.leases$|^dhclient")),
    ("/root", re.compile(r"\.ks$")),
)


def no_build_leftovers(ctx: AuditContext) -> Finding:
    found = [f"{p} exists" for p in LEFTOVER_FILES if ctx.root.lstat(p) is not None]
    for folder, pattern in LEFTOVER_PATTERNS:
        found += [f"{folder}/{n} exists" for n in ctx.root.listdir(folder) if pattern.search(n)]
    resolv = ctx.root.lstat("/etc/resolv.conf")
    if resolv is not None and stat.S_ISREG(resolv.st_mode) and resolv.st_size > 0:
        found.append("/etc/resolv.conf is a file with the build's resolver (must be absent or a symlink)")
    return verdict(
        found, "no passwd backups, build resolver, qemu-*-static, apt archives, leases or persistent net rules"
    )


SECRET_NAMES = {
    "id_rsa", "id_dsa", "id_ecdsa", "id_ed25519", "id_ecdsa_sk", "id_ed25519_sk", ".netrc", ".git-credentials",
    ".pgpass", "krb5.keytab", ".s3cfg", ".boto",
}  # fmt: skip
SECRET_PATHS = (re.compile(r"/\.aws/credentials$"), re.compile(r"/\.docker/config\.json$"), re.compile(r"\.keytab$"))
# A whole PEM block (header, base64 body, matching footer): code that merely names the header, such as
# compiled Python of a key parser, is not a key.
PRIVATE_KEY = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY((?: BLOCK)?)-----\r?\n"
    rb"(?:[A-Za-z-]+: [^\r\n]*\r?\n)*\s*"
    rb"(?:[A-Za-z0-9+/=]{4,}\r?\n)+"
    rb"-----END \1PRIVATE KEY\2-----"
)
AWS_KEY = re.compile(rb"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
SCAN_LIMIT = 4 * 1024 * 1024  # keys and credential files are small; big binaries are skipped
SKIP_TREES = ("/proc/", "/sys/", "/dev/", "/run/")


def no_private_keys(ctx: AuditContext) -> Finding:
    """PEM/OpenSSH private keys, cloud access keys and credential files, except unchanged files a package ships."""
    found = []
    for path, st in ctx.entries:
        if not stat.S_ISREG(st.st_mode) or path.startswith(SKIP_TREES):
            continue
        name = path.rsplit("/", 1)[-1]
        reason = None
        if name in SECRET_NAMES or any(r.search(path) for r in SECRET_PATHS):
            reason = "credential file"
        elif st.st_size <= SCAN_LIMIT:
            data = ctx.root.read_bytes(path, SCAN_LIMIT) or b""
            if b"PRIVATE KEY" in data and (m := PRIVATE_KEY.search(data)):
                reason = f"-----BEGIN {m.group(1).decode()}PRIVATE KEY----- block"
            elif (b"AKIA" in data or b"ASIA" in data) and AWS_KEY.search(data):
                reason = "cloud access key id"
        if reason and not _shipped_unchanged(ctx, path):
            found.append(f"{path}: {reason}")
    return verdict(found, f"scanned {len(ctx.entries)} paths: no private keys or credential files")


def _shipped_unchanged(ctx: AuditContext, path: str) -> bool:
    """True for a file a Debian package installed and nobody changed (public test data, not a secret)."""
    expected = ctx.dpkg_md5sums.get(path)
    data = ctx.root.read_bytes(path, 1 << 30) if expected else None
    return data is not None and hashlib.md5(data, usedforsecurity=False).hexdigest() == expected


# --- packages ------------------------------------------------------------------------------------


def no_pending_security_updates(ctx: AuditContext) -> Finding:
    if ctx.security_index is None:
        return failed(f"cannot check against the security mirror: {ctx.security_error}")
    packages = ctx.packages if ctx.packages is not None else _dpkg_as_packages(ctx)
    pending = []
    for p in packages:
        newer = ctx.security_index.get((p.name, p.arch)) or ctx.security_index.get((p.name, "all"))
        if newer is None:
            continue
        try:
            behind = Version(newer) > Version(p.version)
        except ValueError:  # the guest's dpkg status is outside input
            pending.append(f"{p.name}: installed version {p.version!r} is not a Debian version")
            continue
        if behind:
            pending.append(f"{p.name} {p.version} installed, {newer} in {ctx.security_source}")
    return verdict(pending, f"{len(packages)} packages, none older than {ctx.security_source}")


def _dpkg_as_packages(ctx: AuditContext) -> tuple[InstalledPackage, ...]:
    return tuple(InstalledPackage(n.split(":")[0], v, a) for n, (v, a) in sorted(ctx.dpkg_installed.items()))


def package_list_recorded(ctx: AuditContext) -> Finding:
    if not ctx.packages:
        return failed("manifest.json records no installed packages")
    recorded = {(p.name, p.version) for p in ctx.packages}
    on_disk = {(n.split(":")[0], v) for n, (v, _a) in ctx.dpkg_installed.items()}
    if not on_disk:
        return failed("/var/lib/dpkg/status lists no installed packages")
    problems = [f"{n} {v} is installed but not in manifest.json" for n, v in sorted(on_disk - recorded)][:20]
    problems += [f"{n} {v} is in manifest.json but not installed" for n, v in sorted(recorded - on_disk)][:20]
    return verdict(problems, f"manifest.json records the {len(recorded)} packages /var/lib/dpkg/status lists")


# --- EFI system partition -----------------------------------------------------------------------

ESP_LOADERS = ("/efi/boot/bootx64.efi", "/efi/boot/bootaa64.efi")  # the removable-media path firmware boots
ESP_KEY_SUFFIXES = (".pem", ".key", ".der", ".crt", ".cer", ".auth", ".esl", ".p12", ".pfx")
# what GRUB's own grub-install leaves next to grubx64.efi: a stub that finds the root and reads its menu
ESP_STUB_COMMANDS = ("search", "search.fs_uuid", "search.fs_label", "set", "configfile", "insmod")
ESP_STUB_MAX_BYTES = 4096


def _esp_file_problem(ctx: AuditContext, path: str, size: int) -> str | None:
    """Why an ESP file should not be there (None if it belongs: EFI binaries, shim's CSV, GRUB's stub)."""
    esp = ctx.root.esp
    assert esp is not None
    lower = path.lower()
    if lower.endswith(ESP_KEY_SUFFIXES):
        return "key or certificate file"
    data = esp.read_bytes(path, SCAN_LIMIT) or b""
    if b"PRIVATE KEY" in data and PRIVATE_KEY.search(data):
        return "holds a private key"
    if not lower.startswith("/efi/"):
        return "outside /EFI"
    if lower.endswith(".efi"):
        return None if data[:2] == b"MZ" else "not an EFI (PE) binary"
    if lower.endswith(".csv") and lower.count("/") == 3:
        return None  # shim's BOOTX64.CSV (fallback boot entry)
    if lower.endswith("/grub.cfg") and lower.count("/") == 3 and size <= ESP_STUB_MAX_BYTES:
        lines = [ln.strip() for ln in data.decode("utf-8", "replace").splitlines()]
        odd = [ln for ln in lines if ln and not ln.startswith("#") and ln.split()[0] not in ESP_STUB_COMMANDS]
        return f"GRUB config does more than find the root filesystem ({odd[0]!r})" if odd else None
    return "stray file (config, script or data)"


def esp_contents(ctx: AuditContext) -> Finding:
    """A GPT disk's EFI system partition holds a boot loader at the removable path and nothing else:
    EFI binaries (GRUB, shim), shim's CSV and GRUB's stub config only; no keys, scripts or configs."""
    esp = ctx.root.esp
    if esp is None:
        return passed("no EFI system partition (a BIOS disk)")
    files = [(path, st.st_size) for path, st in esp.walk("/") if stat.S_ISREG(st.st_mode)]
    problems = [f"ESP {path}: {why}" for path, size in files if (why := _esp_file_problem(ctx, path, size))]
    loaders = [path for path, _ in files if path.lower() in ESP_LOADERS]
    if not loaders:
        problems.insert(0, f"ESP: no boot loader at {' or '.join(p.upper() for p in ESP_LOADERS)}")
    return verdict(problems, f"ESP holds {len(files)} file(s): boot loader {', '.join(loaders)}")
