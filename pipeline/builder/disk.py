"""A rootfs tarball -> a bootable disk -> qcow2, laid out for the appliance's firmware:

- ``bios``: MBR, one ext4 partition at 1 MiB, GRUB's core.img in the gap before it;
- ``uefi``: GPT, an EFI system partition (vfat) at 2 MiB, ext4 root at 128 MiB;
- ``hybrid``: as ``uefi`` plus a BIOS boot partition at 1 MiB holding GRUB's core.img, so the same
  disk boots under SeaBIOS and under OVMF (what Debian's own cloud images do).

The ESP is made in userspace (``mkfs.vfat -C`` on a file, mtools to fill it) and copied into place;
GRUB's EFI image is ``EFI/BOOT/BOOTX64.EFI`` (the removable path: a fresh NVRAM has no boot entry)
and ``EFI/debian/grubx64.efi``. Both GRUBs read the same ``/boot/grub/grub.cfg`` on the root.

This kernel has no partition-table parsers, device-mapper or nbd, so ``losetup -P`` gives no
``/dev/loopNp1``: one loop device covers the whole disk (for the boot loader) and a second one the
partition (``-o 1MiB --sizelimit``). ``grub-install`` cannot cope with that layout, so its job is done
by hand inside the chroot: ``grub-mkimage`` with an embedded ``search.fs_uuid`` plus ``grub-bios-setup``
on the whole-disk loop. The menu is a minimal ``grub.cfg``; ``update-grub`` runs in the VM later
(Debian's 10_linux refuses loop-mounted roots). Needs root.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from pipeline import run
from pipeline.appliance import Firmware
from pipeline.errors import BuildError, PipelineError
from pipeline.fsutil import atomic_path
from pipeline.log import log

MIB = 1024 * 1024
PART_OFFSET = MIB  # bios: the partition starts at 1 MiB; GRUB's core.img lives in the gap before it
BIOS_BOOT_OFFSET = MIB  # GPT: BIOS boot partition (hybrid only), 1 MiB
ESP_OFFSET = 2 * MIB  # GPT: EFI system partition
ESP_SIZE = 126 * MIB
GPT_ROOT_OFFSET = 128 * MIB
BIOS_BOOT_TYPE = "21686148-6449-6E6F-744E-656564454649"
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
_UUID_NAMESPACE = uuid.UUID("0f6f1d5e-6a53-4a0e-9a51-6d1f0b7a2c11")
_GRUB_MODULES = ["biosdisk", "part_msdos", "ext2", "search_fs_uuid"]
_GRUB_GPT_BIOS_MODULES = ["biosdisk", "part_gpt", "ext2", "search_fs_uuid"]
_GRUB_EFI_MODULES = ["part_gpt", "fat", "ext2", "search_fs_uuid", "normal", "linux", "serial", "efi_gop"]


def disk_key(rootfs_sha256: str, size_gb: int, firmware: Firmware = Firmware.BIOS) -> str:
    """Cache key of a base disk: its rootfs, its size, its firmware and the code that assembles it."""
    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    return hashlib.sha256(f"{rootfs_sha256}:{size_gb}:{firmware.value}:{code}".encode()).hexdigest()


def esp_volume_id(rootfs_sha256: str) -> str:
    """The ESP's FAT volume id (8 hex digits) derived from the rootfs; fstab names it XXXX-XXXX."""
    return hashlib.sha256(f"esp:{rootfs_sha256}".encode()).hexdigest()[:8].upper()


def root_uuid(rootfs_sha256: str) -> str:
    """Filesystem UUID derived from the rootfs (same inputs, same disk)."""
    return str(uuid.uuid5(_UUID_NAMESPACE, rootfs_sha256))


def base_disk(
    tarball: Path,
    rootfs_sha256: str,
    size_gb: int,
    cache_dir: Path,
    work_dir: Path,
    log_file: TextIO,
    firmware: Firmware = Firmware.BIOS,
) -> Path:
    """The cached qcow2 base disk for this rootfs, assembled if absent."""
    out = cache_dir / "disks" / f"{disk_key(rootfs_sha256, size_gb, firmware)}.qcow2"
    if out.is_file():
        log.info("base disk from cache: %s", out.name[:16])
        return out
    try:
        with atomic_path(out) as partial:
            if firmware is Firmware.BIOS:
                assemble_disk(tarball, partial, size_gb, root_uuid(rootfs_sha256), work_dir, log_file)
            else:
                assemble_gpt_disk(tarball, partial, size_gb, root_uuid(rootfs_sha256), esp_volume_id(rootfs_sha256),
                                  firmware, work_dir, log_file)  # fmt: skip
    except PipelineError as e:
        if isinstance(e, BuildError):
            raise
        raise BuildError("disk", str(e).splitlines()[0], getattr(e, "output_tail", "")) from e
    return out


def _cmd(log_file: TextIO, *argv: str, timeout: float = 600) -> str:
    log_file.write("$ " + " ".join(argv) + "\n")
    res = run.run(list(argv), timeout=timeout)
    for text in (res.stdout, res.stderr):
        if text.strip():
            log_file.write(text if text.endswith("\n") else text + "\n")
    log_file.flush()
    return res.stdout.strip()


@contextlib.contextmanager
def _loop(log_file: TextIO, image: Path, offset: int = 0, size: int | None = None) -> Iterator[str]:
    args = ["losetup", "--find", "--show"]
    if offset:
        args += ["--offset", str(offset)]
    if size is not None:
        args += ["--sizelimit", str(size)]
    device = _cmd(log_file, *args, str(image))
    try:
        yield device
    finally:
        _cmd(log_file, "losetup", "--detach", device)


@contextlib.contextmanager
def _mounted(log_file: TextIO, source: str, target: Path, *options: str) -> Iterator[Path]:
    target.mkdir(parents=True, exist_ok=True)
    _cmd(log_file, "mount", *options, source, str(target))
    try:
        yield target
    finally:
        _cmd(log_file, "umount", str(target))


def mount_points_under(path: Path) -> list[Path]:
    """Mount points at or below ``path``, in the order they were mounted (``/proc/self/mountinfo``'s
    order: a mount nested in another comes after it). Octal escapes (``\\040`` for a space) decoded."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4])
        if point == str(path) or point.startswith(f"{path}/"):
            points.append(Path(point))
    return points


def unmount_under(path: Path) -> list[Path]:
    """Unmount everything at or below ``path``, the last mounted first (a lazy unmount if busy), and
    return what is still mounted. A chroot tool that died by a signal (mmdebstrap stopped mid-way in
    root mode) can leave its /proc, /sys, /dev/pts and /dev/shm mounted in our work folder."""
    for point in reversed(mount_points_under(path)):
        how = "unmounted"
        if run.run(["umount", str(point)], check=False, timeout=60).returncode != 0:
            how = "detached (lazy umount: busy)"
            run.run(["umount", "--lazy", str(point)], check=False, timeout=60)
        log.debug("%s %s, left behind by a stopped tool", how, point)
    return mount_points_under(path)


def assemble_disk(tarball: Path, out_qcow2: Path, size_gb: int, fs_uuid: str, work_dir: Path, log_file: TextIO) -> None:
    """Write a bootable qcow2 of ``size_gb`` GiB holding the rootfs from ``tarball``."""
    if os.geteuid() != 0:
        raise BuildError("disk", "assembling a disk needs root (loop devices, mount)", hint="run the build as root")
    for tool in ("losetup", "sfdisk", "mkfs.ext4", "qemu-img"):
        run.find_tool(tool)
    work_dir.mkdir(parents=True, exist_ok=True)
    raw = work_dir / "disk.raw"
    size = size_gb * 1024**3
    with open(raw, "wb") as f:
        f.truncate(size)
    try:
        layout = f"label: dos\nstart={PART_OFFSET // 512}, type=83, bootable\n"
        log_file.write(f"$ sfdisk {raw} <<< {layout!r}\n")
        run.run([run.find_tool("sfdisk"), "--no-reread", "--no-tell-kernel", str(raw)], input_text=layout)
        with _loop(log_file, raw) as whole, _loop(log_file, raw, PART_OFFSET, size - PART_OFFSET) as part:
            _cmd(log_file, "mkfs.ext4", "-q", "-F", "-L", "root", "-U", fs_uuid, part)
            mnt = work_dir / "mnt"
            with _mounted(log_file, part, mnt):
                _cmd(log_file, "tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", str(tarball),
                     "-C", str(mnt), timeout=1200)  # fmt: skip
                _write_boot_config(mnt, fs_uuid)
                _install_grub(log_file, mnt, whole, fs_uuid)
        _cmd(log_file, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(out_qcow2), timeout=1200)
    finally:
        raw.unlink(missing_ok=True)


def _kernel_files(mnt: Path) -> tuple[str, str]:
    kernels = sorted((mnt / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise BuildError("disk", "the rootfs has no kernel in /boot", hint="add a linux-image package to the base")
    version = kernels[-1].name.removeprefix("vmlinuz-")
    return f"/boot/vmlinuz-{version}", f"/boot/initrd.img-{version}"


def _write_boot_config(mnt: Path, fs_uuid: str, esp_id: str | None = None) -> None:
    fstab = "# <file system> <mount point> <type> <options> <dump> <pass>\n"
    fstab += f"UUID={fs_uuid} / ext4 errors=remount-ro 0 1\n"
    if esp_id is not None:
        # nofail: a cloud that strips the ESP must still boot (under BIOS nothing needs it)
        fstab += f"UUID={esp_id[:4]}-{esp_id[4:]} /boot/efi vfat umask=0077,nofail 0 0\n"
        (mnt / "boot/efi").mkdir(parents=True, exist_ok=True)
    (mnt / "etc/fstab").write_text(fstab)
    kernel, initrd = _kernel_files(mnt)
    grub_dir = mnt / "boot/grub"
    grub_dir.mkdir(parents=True, exist_ok=True)
    (grub_dir / "grub.cfg").write_text(
        "# minimal menu written by vmi-pipeline; update-grub replaces it during provisioning\n"
        "set timeout=0\n"
        "serial --unit=0 --speed=115200\n"
        "terminal_input console\n"  # serial input costs 3 s per boot (pipeline.builder.bootstrap)
        "terminal_output serial console\n"
        "menuentry 'Debian GNU/Linux' {\n"
        f"  search --no-floppy --fs-uuid --set=root {fs_uuid}\n"
        f"  linux {kernel} root=UUID={fs_uuid} ro quiet console=tty0 console=ttyS0,115200n8\n"
        f"  initrd {initrd}\n"
        "}\n"
    )
    (grub_dir / "grub.cfg").chmod(0o600)


def _install_grub(log_file: TextIO, mnt: Path, whole_disk: str, fs_uuid: str) -> None:
    """What grub-install would do: modules to /boot/grub/i386-pc, core.img, boot sector + embedding."""
    modules = mnt / "usr/lib/grub/i386-pc"
    if not modules.is_dir():
        raise BuildError("disk", "the rootfs has no GRUB for BIOS", hint="add grub-pc to the base packages")
    target = mnt / "boot/grub/i386-pc"
    shutil.copytree(modules, target, dirs_exist_ok=True)
    early = mnt / "boot/grub/i386-pc/early.cfg"
    early.write_text(f"search.fs_uuid {fs_uuid} root\nset prefix=($root)/boot/grub\n")
    with contextlib.ExitStack() as stack:
        for fs in ("dev", "proc", "sys"):
            stack.enter_context(_mounted(log_file, f"/{fs}", mnt / fs, "--bind"))
        chroot = ["chroot", str(mnt)]
        _cmd(log_file, *chroot, "grub-mkimage", "-O", "i386-pc", "-o", "/boot/grub/i386-pc/core.img",
             "-c", "/boot/grub/i386-pc/early.cfg", "-p", "/boot/grub", *_GRUB_MODULES)  # fmt: skip
        _cmd(log_file, *chroot, "grub-bios-setup", "--directory=/boot/grub/i386-pc", whole_disk)
    early.unlink()


def _partitions(log_file: TextIO, raw: Path) -> list[tuple[int, int]]:
    """(offset, size) in bytes of each partition sfdisk wrote, in table order."""
    out = _cmd(log_file, run.find_tool("sfdisk"), "--json", str(raw))
    table = json.loads(out)["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    return [(int(p["start"]) * sector, int(p["size"]) * sector) for p in table["partitions"]]


def assemble_gpt_disk(
    tarball: Path,
    out_qcow2: Path,
    size_gb: int,
    fs_uuid: str,
    esp_id: str,
    firmware: Firmware,
    work_dir: Path,
    log_file: TextIO,
) -> None:
    """Write a GPT qcow2 with an ESP (and for ``hybrid`` a BIOS boot partition) holding the rootfs."""
    if os.geteuid() != 0:
        raise BuildError("disk", "assembling a disk needs root (loop devices, mount)", hint="run the build as root")
    for tool in ("losetup", "sfdisk", "mkfs.ext4", "mkfs.vfat", "mcopy", "mmd", "qemu-img"):
        run.find_tool(tool)
    work_dir.mkdir(parents=True, exist_ok=True)
    raw = work_dir / "disk.raw"
    esp = work_dir / "esp.img"
    with open(raw, "wb") as f:
        f.truncate(size_gb * 1024**3)
    try:
        layout = "label: gpt\n"
        if firmware.boots_bios:
            layout += f"start={BIOS_BOOT_OFFSET // 512}, size={MIB // 512}, type={BIOS_BOOT_TYPE}, name=bios\n"
        layout += f"start={ESP_OFFSET // 512}, size={ESP_SIZE // 512}, type={ESP_TYPE}, name=esp\n"
        layout += f"start={GPT_ROOT_OFFSET // 512}, type={LINUX_TYPE}, name=root\n"
        log_file.write(f"$ sfdisk {raw} <<< {layout!r}\n")
        run.run([run.find_tool("sfdisk"), "--no-reread", "--no-tell-kernel", str(raw)], input_text=layout)
        root_offset, root_size = _partitions(log_file, raw)[-1]
        with _loop(log_file, raw) as whole, _loop(log_file, raw, root_offset, root_size) as part:
            _cmd(log_file, "mkfs.ext4", "-q", "-F", "-L", "root", "-U", fs_uuid, part)
            mnt = work_dir / "mnt"
            with _mounted(log_file, part, mnt):
                _cmd(log_file, "tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", str(tarball),
                     "-C", str(mnt), timeout=1200)  # fmt: skip
                _write_boot_config(mnt, fs_uuid, esp_id)
                efi_image = _install_grub_gpt(log_file, mnt, whole, fs_uuid, firmware)
            esp.unlink(missing_ok=True)
            _cmd(log_file, "mkfs.vfat", "-C", "-F", "32", "-n", "EFI", "-i", esp_id, str(esp), str(ESP_SIZE // 1024))
            _cmd(log_file, "mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT", "::/EFI/debian")
            _cmd(log_file, "mcopy", "-i", str(esp), str(efi_image), "::/EFI/BOOT/BOOTX64.EFI")
            _cmd(log_file, "mcopy", "-i", str(esp), str(efi_image), "::/EFI/debian/grubx64.efi")
            with open(esp, "rb") as src, open(raw, "r+b") as dst:
                dst.seek(ESP_OFFSET)
                shutil.copyfileobj(src, dst, 4 * MIB)
        _cmd(log_file, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(out_qcow2), timeout=1200)
    finally:
        raw.unlink(missing_ok=True)
        esp.unlink(missing_ok=True)


def _bios_setup(mnt: Path) -> str:
    """grub-bios-setup inside the rootfs: trixie moved it out of the PATH into GRUB's i386-pc folder."""
    for candidate in ("usr/lib/grub/i386-pc/grub-bios-setup", "usr/sbin/grub-bios-setup"):
        if (mnt / candidate).is_file():
            return "/" + candidate
    raise BuildError("disk", "the rootfs has no grub-bios-setup", hint="add grub-pc-bin to the base packages")


def _install_grub_gpt(log_file: TextIO, mnt: Path, whole_disk: str, fs_uuid: str, firmware: Firmware) -> Path:
    """grub-install's job for a GPT disk: core.img into the BIOS boot partition (hybrid), and GRUB's EFI
    image built in the chroot; returns the EFI image (host path) for the ESP."""
    early = mnt / "boot/grub/early.cfg"
    early.parent.mkdir(parents=True, exist_ok=True)
    early.write_text(f"search.fs_uuid {fs_uuid} root\nset prefix=($root)/boot/grub\n")
    platforms = (["i386-pc"] if firmware.boots_bios else []) + ["x86_64-efi"]
    for platform in platforms:
        modules = mnt / "usr/lib/grub" / platform
        if not modules.is_dir():
            package = "grub-pc-bin" if platform == "i386-pc" else "grub-efi-amd64-bin"
            hint = f"add {package} to the base packages"
            raise BuildError("disk", f"the rootfs has no GRUB for {platform}", hint=hint)
        shutil.copytree(modules, mnt / "boot/grub" / platform, dirs_exist_ok=True)
    efi_image = mnt / "boot/grub/x86_64-efi/grubx64.efi"
    with contextlib.ExitStack() as stack:
        for fs in ("dev", "proc", "sys"):
            stack.enter_context(_mounted(log_file, f"/{fs}", mnt / fs, "--bind"))
        chroot = ["chroot", str(mnt)]
        if firmware.boots_bios:
            _cmd(log_file, *chroot, "grub-mkimage", "-O", "i386-pc", "-o", "/boot/grub/i386-pc/core.img",
                 "-c", "/boot/grub/early.cfg", "-p", "/boot/grub", *_GRUB_GPT_BIOS_MODULES)  # fmt: skip
            _cmd(log_file, *chroot, _bios_setup(mnt), "--directory=/boot/grub/i386-pc", whole_disk)
        _cmd(log_file, *chroot, "grub-mkimage", "-O", "x86_64-efi", "-o", "/boot/grub/x86_64-efi/grubx64.efi",
             "-c", "/boot/grub/early.cfg", "-p", "/boot/grub", *_GRUB_EFI_MODULES)  # fmt: skip
    early.unlink()
    host_copy = mnt.parent / "grubx64.efi"
    shutil.copyfile(efi_image, host_copy)
    efi_image.unlink()
    return host_copy
