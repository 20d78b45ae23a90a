"""Small but real disks for the audit tests: a rootfs tree in tmp_path, then a partitioned raw
disk (sfdisk + ``mkfs.ext4 -E offset=... -d ROOT``: no mount needed), converted to qcow2. A
``gpt-esp`` disk also has an EFI system partition: ``mkfs.vfat -C`` on a file, filled with mcopy,
copied into place (what the pipeline's hybrid disks look like)."""

from __future__ import annotations

import lzma
import os
import subprocess
from pathlib import Path

from pipeline.manifest import InstalledPackage

MIB = 1024 * 1024
LINUX_FS_GUID = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
BIOS_BOOT_GUID = "21686148-6449-6E6F-744E-656564494648"
ESP_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ESP_START, ESP_MIB = 4096, 8  # sectors, MiB: the ESP at 2 MiB, the root after it
PE_STUB = b"MZ" + bytes(510)  # enough of a PE header for the audit's "is it an EFI binary" test
GRUB_STUB = (
    "search.fs_uuid 0f6f1d5e-6a53-4a0e-9a51-6d1f0b7a2c11 root\nset prefix=($root)'/boot/grub'\n"
    "configfile $prefix/grub.cfg\n"
)

PACKAGES = (
    InstalledPackage("base-files", "12.4+deb12u8", "amd64"),
    InstalledPackage("cloud-init", "22.4.2-1+deb12u1", "all"),
    InstalledPackage("openssh-server", "1:9.2p1-2+deb12u3", "amd64"),
    InstalledPackage("openssl", "3.0.15-1~deb12u1", "amd64"),
    InstalledPackage("testkeys", "1.0", "all"),
)
TEST_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
SHIPPED_KEY_PATH = "usr/share/doc/testkeys/example_key"
CLOUD_UNITS = ("cloud-init-local.service", "cloud-init.service", "cloud-config.service", "cloud-final.service")

SSHD_CONFIG = """\
# Debian's sshd_config, trimmed: drop-ins come first, so they win
Include /etc/ssh/sshd_config.d/*.conf

#PermitRootLogin prohibit-password
KbdInteractiveAuthentication no
UsePAM yes
X11Forwarding yes
PrintMotd no
AcceptEnv LANG LC_*
Subsystem\tsftp\t/usr/lib/openssh/sftp-server
"""
HARDENING = """\
PermitRootLogin no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitEmptyPasswords no
"""

GRUB_CFG = """\
serial --speed=115200
terminal_output console serial
menuentry 'Debian GNU/Linux' {
\tlinux\t/boot/vmlinuz-6.1.0-57-cloud-amd64 root=UUID=0c12 ro console=tty0 console=ttyS0,115200n8 quiet
}
submenu 'Advanced options for Debian GNU/Linux' {
\tmenuentry 'Debian GNU/Linux, with Linux 6.1.0-57-cloud-amd64 (recovery mode)' {
\t\tlinux\t/boot/vmlinuz-6.1.0-57-cloud-amd64 root=UUID=0c12 ro single console=tty0 console=ttyS0,115200n8
\t}
}
"""
DEBIAN_SOURCES = """\
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def write(root: Path, path: str, text: str | bytes, mode: int = 0o644) -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(text.encode() if isinstance(text, str) else text)
    target.chmod(mode)
    return target


def dpkg_status(packages: tuple[InstalledPackage, ...]) -> str:
    return "\n".join(
        f"Package: {p.name}\nStatus: install ok installed\nArchitecture: {p.arch}\nVersion: {p.version}\n"
        for p in packages
    )


def good_rootfs(root: Path) -> Path:
    """A hardened, sealed Debian-like root filesystem that passes every check."""
    import hashlib

    for d in ("tmp", "var/tmp", "var/lib/cloud", "home", "root", "run", "proc", "sys", "dev", "etc/sudoers.d"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    write(
        root,
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
        "_apt:x:42:65534::/nonexistent:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    )
    write(
        root,
        "etc/shadow",
        "root:!*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n_apt:*:19000:0:99999:7:::\n"
        "nobody:*:19000:0:99999:7:::\n",
        0o640,
    )
    write(root, "etc/group", "root:x:0:\ndaemon:x:1:\nshadow:x:42:\nnogroup:x:65534:\n")
    write(root, "etc/gshadow", "root:*::\ndaemon:*::\nshadow:*::\nnogroup:*::\n", 0o640)
    write(root, "etc/sudoers", "root ALL=(ALL:ALL) ALL\n@includedir /etc/sudoers.d\n", 0o440)
    write(root, "boot/grub/grub.cfg", GRUB_CFG, 0o600)
    write(root, "etc/apt/sources.list.d/debian.sources", DEBIAN_SOURCES)
    write(root, "usr/share/keyrings/debian-archive-keyring.gpg", b"\x99\x02\x0d")
    write(root, "usr/bin/passwd", b"\x7fELF", 0o4755)
    write(root, "usr/bin/chage", b"\x7fELF", 0o2755)
    os.chown(root / "usr/bin/chage", 0, 42)
    for shadow in ("etc/shadow", "etc/gshadow"):
        os.chown(root / shadow, 0, 42)
    write(root, "etc/ssh/sshd_config", SSHD_CONFIG)
    write(root, "etc/ssh/sshd_config.d/00-vmi-hardening.conf", HARDENING)
    write(root, "etc/ssh/moduli", "# moduli\n")
    write(root, "etc/machine-id", "", 0o444)
    write(root, "etc/hostname", "localhost\n")
    write(root, "etc/default/grub", 'GRUB_CMDLINE_LINUX="console=ttyS0"\n')
    write(root, "var/lib/dpkg/status", dpkg_status(PACKAGES))
    write(root, SHIPPED_KEY_PATH, TEST_KEY)  # a package's public example key: not a leak
    md5 = hashlib.md5(TEST_KEY.encode()).hexdigest()
    write(root, "var/lib/dpkg/info/testkeys.md5sums", f"{md5}  {SHIPPED_KEY_PATH}\n")
    write(root, "usr/bin/cloud-init", "#!/usr/bin/python3\n", 0o755)
    wants = root / "etc/systemd/system/cloud-init.target.wants"
    wants.mkdir(parents=True)
    for unit in CLOUD_UNITS:
        write(root, f"lib/systemd/system/{unit}", "[Unit]\n[Install]\nWantedBy=cloud-init.target\n")
        os.symlink(f"/lib/systemd/system/{unit}", wants / unit)
    for log in ("wtmp", "btmp", "lastlog", "apt/history.log", "dpkg.log"):
        write(root, f"var/log/{log}", "")
    (root / "var/lib/dbus").mkdir(parents=True)
    os.symlink("/etc/machine-id", root / "var/lib/dbus/machine-id")
    return root


def good_esp(esp: Path) -> Path:
    """What the pipeline puts on a hybrid disk's ESP: GRUB at the removable path and as Debian's loader,
    plus the stub config grub-install leaves beside it."""
    write(esp, "EFI/BOOT/BOOTX64.EFI", PE_STUB)
    write(esp, "EFI/debian/grubx64.efi", PE_STUB)
    write(esp, "EFI/debian/grub.cfg", GRUB_STUB)
    return esp


def _write_esp(raw: Path, esp_dir: Path) -> None:
    image = raw.with_suffix(".esp")
    image.unlink(missing_ok=True)
    subprocess.run(["mkfs.vfat", "-C", str(image), str(ESP_MIB * 1024)], check=True, capture_output=True)
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    for entry in sorted(esp_dir.rglob("*")):
        target = "::/" + entry.relative_to(esp_dir).as_posix()
        argv = ["mmd", "-i", str(image), target] if entry.is_dir() else ["mcopy", "-i", str(image), str(entry), target]
        subprocess.run(argv, check=True, capture_output=True, env=env)
    with open(image, "rb") as src, open(raw, "r+b") as dst:
        dst.seek(ESP_START * 512)
        dst.write(src.read())
    image.unlink()


def make_disk(
    rootdir: Path, out: Path, table: str = "mbr", fmt: str = "qcow2", size_mib: int = 40, esp: Path | None = None
) -> Path:
    """``rootdir`` as an ext4 root on a partitioned disk (``table``: mbr, gpt, gpt-esp or none), in ``fmt``.
    ``gpt-esp`` adds an EFI system partition holding ``esp`` (a folder; default: ``good_esp``)."""
    raw = out.with_suffix(".raw")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(raw, "wb") as f:
        f.truncate(size_mib * MIB)
    offset, fs_mib = 0, size_mib
    if table != "none":
        layout = "label: dos\nstart=2048, type=83\n"
        if table == "gpt":
            layout = f"label: gpt\nstart=2048, size=2048, type={BIOS_BOOT_GUID}\nstart=4096, type={LINUX_FS_GUID}\n"
        root_start = {"mbr": 2048, "gpt": 4096, "gpt-esp": ESP_START + ESP_MIB * 2048}[table]
        if table == "gpt-esp":
            layout = (
                f"label: gpt\nstart=2048, size=2048, type={BIOS_BOOT_GUID}\n"
                f"start={ESP_START}, size={ESP_MIB * 2048}, type={ESP_GUID}\nstart={root_start}, type={LINUX_FS_GUID}\n"
            )
        subprocess.run(["sfdisk", "-q", str(raw)], input=layout, text=True, check=True)
        if table == "gpt-esp":
            _write_esp(raw, esp if esp is not None else good_esp(out.parent / f"{out.stem}-esp"))
        offset = root_start * 512
        fs_mib = size_mib - offset // MIB - 1
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-E", f"offset={offset}", "-d", str(rootdir), str(raw), f"{fs_mib}M"],
        check=True,
        capture_output=True,
    )
    if fmt == "raw":
        return raw.rename(out)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt, str(raw), str(out)], check=True)
    raw.unlink()
    return out


def security_packages(versions: dict[str, str]) -> bytes:
    """A Packages.xz with these (name -> version) entries, as bookworm-security publishes it."""
    text = "\n".join(
        f"Package: {name}\nVersion: {version}\nArchitecture: {'all' if name == 'cloud-init' else 'amd64'}\n"
        for name, version in versions.items()
    )
    return lzma.compress(text.encode())
