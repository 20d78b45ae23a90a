"""The base root filesystem of a ``bootstrap`` appliance: mmdebstrap, fully patched, into a tarball.

Package work happens here, at native speed, not in the emulated guest (where maintainer scripts run
20-50x slower). The suite, its ``-updates`` and its ``-security`` suites are all included, so the
rootfs is already patched and the in-guest upgrade is quick. Tarballs are cached in
``<cache>/bootstrap/<key>.tar``, keyed by everything that decides their content, and reused for
``MAX_AGE`` (after that a fresh one picks up new package versions).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from pipeline import run
from pipeline.appliance import Arch, Bootstrap
from pipeline.errors import BuildError, PipelineError
from pipeline.fsutil import atomic_path, hash_file, write_text_atomic
from pipeline.log import log

MAX_AGE = 24 * 3600.0
# The package lists stay in the tarball: the in-guest `apt-get update` then only confirms them
# (slow to download and parse in an emulated guest); seal.sh removes them from the image.
_MMDEBSTRAP_OPTIONS = ("--variant=minbase", "--skip=cleanup/apt/lists", "--format=tar")
_DEB_ARCH = {Arch.X86_64: "amd64", Arch.AARCH64: "arm64"}

# Runs on the host with the empty chroot as $1, before any package is installed: what must be in place
# when the kernel's package builds the initramfs (it is built once, in the chroot, at native speed).
# The firmware reads the initramfs through emulated disk I/O and the kernel unpacks it, on every boot of
# every instance, so it leaves out what finding an ext4 root on a local disk never uses: udev's hardware
# database (hwdb.bin, 13 MB of trixie's 18 MB image: vendor/model names and keyboard fixes), and, of
# MODULES=most, the other root file systems and the network and RDMA drivers that exist for a root on
# the network (a cloud's volumes reach the guest as virtio, SCSI, NVMe or ATA disks, which stay). About
# a third of the image; the root file system keeps every module and its own hwdb.
# It also puts fsck in: Debian's own fsck hook learns the root's type from the root device, which does
# not exist in the chroot, so the initramfs had none and systemd checked the root later instead, beside
# everything else the boot starts (1.7 s on its critical chain under TCG); the initramfs checks it
# before anything else runs, and systemd skips its own check once the initramfs has checked.
# And it keeps the kernel from running modprobe before /init: while it initialises, the kernel asks for
# the crypto algorithms its own code uses (hmac(sha256), hmac(sha1), cbc(aes), ctr(aes)...), all built
# in, and runs the initramfs's modprobe for each, 20-24 times, each finding no module (traced: no module
# loads before /init). Each run loads kmod with libcrypto: under TCG /init ran 1.3 s later because of
# them (bench/README.md). With nothing at the kernel's path each request fails at once, as it would
# without an initramfs; /init's first script links modprobe back, before udev and anything else that
# loads a module, so autoloading works as before from /init on, and the root file system is untouched.
_SETUP_HOOK = r"""#!/bin/sh
set -eu
mkdir -p "$1/etc/initramfs-tools/hooks"
cat > "$1/etc/initramfs-tools/hooks/vmi-trim" <<'HOOK'
#!/bin/sh
# vmi-pipeline: an initramfs for an ext4 root on a local disk (the root file system keeps the rest)
case "${1:-}" in prereqs) echo ""; exit 0 ;; esac
rm -f "${DESTDIR:?}/usr/lib/udev/hwdb.bin" "${DESTDIR:?}/etc/udev/hwdb.bin"
for kernel in "${DESTDIR}"/usr/lib/modules/*/kernel "${DESTDIR}"/lib/modules/*/kernel; do
    [ -d "$kernel" ] || continue
    for unused in fs/btrfs fs/xfs fs/nfs fs/nfs_common fs/lockd fs/ceph fs/netfs fs/f2fs fs/jfs fs/udf \
                  fs/reiserfs net/sunrpc net/ceph drivers/net drivers/infiniband; do
        rm -rf "${kernel:?}/$unused"
    done
done
. /usr/share/initramfs-tools/hook-functions
for tool in /usr/sbin/fsck /usr/sbin/logsave /usr/sbin/fsck.ext4; do  # the root is ext4 (pipeline.builder.disk)
    [ ! -x "$tool" ] || copy_exec "$tool"
done
# modprobe is off the kernel's path (/sbin/modprobe) until /init's first script puts it back; /init's
# PATH still finds it in /usr/bin for every script before that
if [ -L "${DESTDIR}/usr/sbin/modprobe" ] && [ -L "${DESTDIR}/sbin" ] && [ -x "${DESTDIR}/usr/bin/kmod" ]; then
    rm "${DESTDIR}/usr/sbin/modprobe"
    ln -sf kmod "${DESTDIR}/usr/bin/modprobe"
fi
HOOK
chmod 0755 "$1/etc/initramfs-tools/hooks/vmi-trim"
mkdir -p "$1/etc/initramfs-tools/scripts/init-top"
cat > "$1/etc/initramfs-tools/scripts/init-top/0vmi-modprobe" <<'SCRIPT'
#!/bin/sh
# vmi-pipeline: the first init-top script (the name sorts first): modprobe back at the kernel's path
case "${1:-}" in prereqs) echo ""; exit 0 ;; esac
[ -e /sbin/modprobe ] || ln -s /usr/bin/kmod /usr/sbin/modprobe
SCRIPT
chmod 0755 "$1/etc/initramfs-tools/scripts/init-top/0vmi-modprobe"
"""

# Runs on the host with the finished chroot as $1 (mmdebstrap executes hook files directly).
_CUSTOMIZE_HOOK = r"""#!/bin/sh
# vmi-pipeline: make the mmdebstrap chroot a neutral base image (build-feasibility.md pitfalls 2-4)
set -eu
root="$1"
# host leftovers: resolver, hostname, SSH host keys generated at build time
rm -f "$root/etc/resolv.conf" "$root/etc/ssh/ssh_host_"*
echo localhost > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
: > "$root/etc/machine-id"
# networking: loopback here, cloud-init renders the rest (DHCP on the first NIC by default)
if [ -d "$root/etc/network" ]; then  # ifupdown bases (bookworm); networkd bases have none
    printf 'source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n' > "$root/etc/network/interfaces"
fi
if [ ! -e "$root/sbin/ifup" ] && [ -e "$root/usr/lib/systemd/system/systemd-resolved.service" ]; then
    # trixie: cloud-init renders systemd-networkd (its fallback asks for DHCPv6 too, which ifupdown's
    # dhclient -6 waits minutes for); resolved answers DNS through the stub, which must stay linked
    chroot "$root" systemctl enable systemd-networkd.service systemd-resolved.service
    ln -sf ../run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"
fi
# serial console, no menu wait (nobody picks an entry on a cloud; Shift/Esc still shows it) and a
# quiet kernel: clouds show the serial log, and every console line costs time in an emulated guest
# (under UEFI tty0 is a framebuffer drawn by the emulated CPU). Errors still reach both consoles.
# GRUB writes to the serial port but reads keys from the console only: with serial as an input
# terminal GRUB 2.12 spends 3.0 s before it runs the default entry, on every boot, under SeaBIOS and
# OVMF alike (measured, bench/README.md).
mkdir -p "$root/etc/default/grub.d"
cat > "$root/etc/default/grub.d/50-vmi.cfg" <<'CFG'
GRUB_TIMEOUT=0
GRUB_TIMEOUT_STYLE=hidden
GRUB_CMDLINE_LINUX_DEFAULT="quiet"
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8"
GRUB_TERMINAL_INPUT="console"
GRUB_TERMINAL_OUTPUT="console serial"
GRUB_SERIAL_COMMAND="serial --speed=115200"
GRUB_DISABLE_OS_PROBER=true
CFG
# later grub-pc upgrades inside the VM reinstall the boot loader on the virtio disk
echo "grub-pc grub-pc/install_devices multiselect /dev/vda" | chroot "$root" debconf-set-selections
echo 'LANG=C.UTF-8' > "$root/etc/default/locale"
# boot work a cloud guest never uses, each costing seconds on the way to SSH in an emulated guest:
# generators for an sshd on AF_VSOCK/AF_UNIX (a second SSH entry point beside the hardened port 22;
# QEMU without a vsock device logs an error for it), for mounting GPT partitions the fstab does not
# name, for resuming from hibernation (no swap); e2scrub needs LVM, which the image does not have
mkdir -p "$root/etc/systemd/system-generators"
for gen in systemd-ssh-generator systemd-gpt-auto-generator systemd-hibernate-resume-generator; do
    ln -sf /dev/null "$root/etc/systemd/system-generators/$gen"
done
chroot "$root" systemctl --quiet disable e2scrub_reap.service e2scrub_all.timer
# grub-common.service clears GRUB's "recordfail" flag after a boot; Debian's menu entries never set it
# (quick_boot="0" in 10_linux: Ubuntu's set it), so here the unit only costs ~1.5 s of CPU (measured:
# its own journal line) in the seconds sshd starts and the first login comes in
if grep -qx 'quick_boot="0"' "$root/etc/grub.d/10_linux" 2>/dev/null; then
    chroot "$root" systemctl --quiet mask grub-common.service
fi
"""


@dataclass(frozen=True)
class Rootfs:
    """A cached rootfs tarball and where its packages came from."""

    tarball: Path
    sha256: str
    sources: tuple[str, ...]
    ref: str


def apt_sources(bootstrap: Bootstrap) -> tuple[str, ...]:
    """The suite plus its -updates and -security suites, as one-line apt sources."""
    comps = " ".join(bootstrap.components)
    return (
        f"deb {bootstrap.mirror} {bootstrap.suite} {comps}",
        f"deb {bootstrap.mirror} {bootstrap.suite}-updates {comps}",
        f"deb {bootstrap.security_mirror} {bootstrap.suite}-security {comps}",
    )


def bootstrap_key(bootstrap: Bootstrap, arch: Arch, mmdebstrap_version: str) -> str:
    """Cache key: the definition, the architecture, the tool version and the customisation applied."""
    doc = {
        "suite": bootstrap.suite,
        "sources": apt_sources(bootstrap),
        "packages": sorted(bootstrap.packages),
        "arch": _DEB_ARCH[arch],
        "mmdebstrap": mmdebstrap_version,
        "hook": hashlib.sha256((_SETUP_HOOK + _CUSTOMIZE_HOOK).encode()).hexdigest(),
        "options": _MMDEBSTRAP_OPTIONS,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def make_rootfs(
    bootstrap: Bootstrap,
    arch: Arch,
    cache_dir: Path,
    work_dir: Path,
    log_file: TextIO,
    *,
    max_age: float = MAX_AGE,
) -> Rootfs:
    """The patched rootfs tarball for ``bootstrap`` (from the cache when fresh enough)."""
    version = run.tool_version([run.find_tool("mmdebstrap"), "--version"])
    key = bootstrap_key(bootstrap, arch, version)
    tarball = cache_dir / "bootstrap" / f"{key}.tar"
    sources = apt_sources(bootstrap)
    ref = f"{bootstrap.suite} from {bootstrap.mirror} (+updates, +security)"
    if tarball.is_file() and time.time() - tarball.stat().st_mtime < max_age:
        age = (time.time() - tarball.stat().st_mtime) / 60
        log.info("rootfs from cache (%.0f min old): %s", age, tarball.name[:16])
    else:
        _run_mmdebstrap(bootstrap, arch, sources, tarball, work_dir, log_file)
    return Rootfs(tarball, tarball_sha256(tarball), sources, ref)


def tarball_sha256(tarball: Path) -> str:
    """sha256 of the tarball, remembered beside it (hashing half a GiB on every build costs seconds)."""
    sidecar = tarball.with_name(tarball.name + ".sha256")
    stat = tarball.stat()
    stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
    if sidecar.is_file():
        recorded_stamp, _, digest = sidecar.read_text().strip().partition(" ")
        if recorded_stamp == stamp and len(digest) == 64:
            return digest
    digest = hash_file(tarball).sha256
    write_text_atomic(sidecar, f"{stamp} {digest}\n")
    return digest


def _run_mmdebstrap(
    bootstrap: Bootstrap, arch: Arch, sources: tuple[str, ...], tarball: Path, work_dir: Path, log_file: TextIO
) -> None:
    work_dir.mkdir(parents=True, exist_ok=True)
    hooks = {}
    for kind, text in (("setup", _SETUP_HOOK), ("customize", _CUSTOMIZE_HOOK)):
        hooks[kind] = work_dir / f"{kind}-hook.sh"
        hooks[kind].write_text(text)
        hooks[kind].chmod(0o755)
    tmp = work_dir / "tmp"
    tmp.mkdir(exist_ok=True)
    with atomic_path(tarball) as partial:
        argv = [
            run.find_tool("mmdebstrap"),
            *_MMDEBSTRAP_OPTIONS,
            f"--architectures={_DEB_ARCH[arch]}",
            f"--components={','.join(bootstrap.components)}",
            f"--include={','.join(bootstrap.packages)}",
            f"--setup-hook={hooks['setup']}",
            f"--customize-hook={hooks['customize']}",
            bootstrap.suite,
            str(partial),
            *sources,
        ]

        def on_line(line: str) -> None:
            log_file.write(line + "\n")
            if line.startswith(("I: ", "E: ", "W: ")):
                log.info("    %s", line, extra={"vmi_console_only": True})

        try:
            run.stream(argv, on_line, env={"TMPDIR": str(tmp)}, timeout=1800)
        except PipelineError as e:
            raise BuildError("bootstrap", "mmdebstrap failed", getattr(e, "output_tail", str(e))) from e
