"""What the reference builds leave out of every boot (issue 10), read offline from the built disks: an
initramfs with neither udev's hardware database nor the modules of a root on the network or on another
file system, compressed with zstd; the generators and units a cloud guest never uses masked or disabled
(grub-common.service too: the image's GRUB menu never sets the failed-boot flag it clears); sshd started
once, without a test run before it (its reload still tests); the root's growth moved to cloud-init's
config stage, which starts once sshd listens (the boot tests then show the root did grow, after sshd's
start). Uses the shared ``reference_build``/``reference_build_13`` fixtures."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.audit.disk import RootFs, open_root
from pipeline.manifest import BuildManifest

pytestmark = [pytest.mark.slow, pytest.mark.build]

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MASKED_GENERATORS = ("systemd-ssh-generator", "systemd-gpt-auto-generator", "systemd-hibernate-resume-generator")


@pytest.fixture(params=["debian-12", "debian-13"])
def reference(request: pytest.FixtureRequest) -> tuple[Path, BuildManifest]:
    fixture = {"debian-12": "reference_build", "debian-13": "reference_build_13"}[request.param]
    return request.getfixturevalue(fixture)  # type: ignore[no-any-return]


def _masked(root: RootFs, path: str) -> bool:
    """``path`` is systemd's mask: a symlink to /dev/null."""
    link = root.host_path(path, follow=False)
    return link is not None and link.is_symlink() and str(link.readlink()) == "/dev/null"


def _module_names(modules: list[str | list[str]]) -> list[str]:
    return [m[0] if isinstance(m, list) else m for m in modules]


def _newest_kernel(root: RootFs) -> str:
    """The newest kernel version installed in ``root``."""
    versions = root.listdir("/usr/lib/modules")
    assert versions
    return sorted(versions)[-1]


def _compressed_part(image: bytes) -> bytes:
    """The first bytes after the image's uncompressed cpio archives (initramfs-tools puts microcode and
    already-compressed modules there, then the compressed main archive)."""
    at = 0
    while image[at : at + 6] == b"070701":
        while True:  # newc entries: 110-byte header, name, data, each padded to 4 bytes
            size, namesize = int(image[at + 54 : at + 62], 16), int(image[at + 94 : at + 102], 16)
            name = image[at + 110 : at + 110 + namesize - 1]
            at = (at + 110 + namesize + 3) & ~3
            at = (at + size + 3) & ~3
            if name == b"TRAILER!!!":
                break
        while image[at : at + 1] == b"\0":
            at += 1
    return image[at : at + 4]


def _initramfs_files(root: RootFs, workdir: Path) -> tuple[bytes, set[str]]:
    """The newest kernel's initramfs: the magic of its compressed part and every path in it, all parts
    together (unpacked by Debian's own ``unmkinitramfs``)."""
    boot = [name for name in root.listdir("/boot") if name.startswith("initrd.img-")]
    assert boot, root.listdir("/boot")
    host = root.host_path(f"/boot/{sorted(boot)[-1]}")
    assert host is not None
    out = workdir / "initramfs"
    unpacked = subprocess.run(["unmkinitramfs", str(host), str(out)], timeout=300, capture_output=True, text=True)
    assert unpacked.returncode == 0, unpacked.stderr
    parts = [out / "early", out / "main"] if (out / "main").is_dir() else [out]  # early/ main/: more than one
    files = {"/" + p.relative_to(part).as_posix() for part in parts for p in part.rglob("*") if not p.is_dir()}
    return _compressed_part(host.read_bytes()), files


def _unpacked_root(workdir: Path) -> Path:
    """Where ``_initramfs_files`` unpacked the initramfs's own root (the one holding /init)."""
    out = workdir / "initramfs"
    return out / "main" if (out / "main").is_dir() else out


def test_boot_work_is_left_out(reference: tuple[Path, BuildManifest], tmp_path: Path) -> None:
    version_dir, manifest = reference
    disk = manifest.artifact("build-disk")
    with open_root(version_dir / disk.name, disk.format, tmp_path / "scratch") as (root, _):
        magic, files = _initramfs_files(root, tmp_path)
        assert magic == ZSTD_MAGIC, magic  # zstd (the image has it), not the gzip fallback
        assert "/init" in files and any(f.endswith("udevd") for f in files)  # still a udev initramfs
        modules = {Path(f).name.split(".ko")[0] for f in files if ".ko" in f}
        builtin = root.read_text(f"/usr/lib/modules/{_newest_kernel(root)}/modules.builtin") or ""
        for disk_driver in ("virtio_blk", "virtio_scsi", "sd_mod", "nvme", "ata_piix"):  # a cloud's disks
            assert disk_driver in modules or f"/{disk_driver}.ko" in builtin, disk_driver
        assert not [f for f in files if f.endswith("hwdb.bin")], "udev's hwdb.bin is in the initramfs"
        left_out = ("/fs/btrfs/", "/fs/xfs/", "/fs/nfs/", "/net/sunrpc/", "/drivers/net/", "/drivers/infiniband/")
        assert not [f for f in files if any(d in f for d in left_out)]
        assert root.is_file("/usr/lib/udev/hwdb.bin") or root.is_file("/etc/udev/hwdb.bin")  # the root keeps it
        # the kernel finds no modprobe before /init (its requests for built-in crypto fail at once); /init's
        # PATH has it, and the first init-top script, before udev's, puts it back at the kernel's path
        assert "/usr/sbin/modprobe" not in files and "/usr/bin/modprobe" in files
        unpacked = _unpacked_root(tmp_path)
        order = (unpacked / "scripts/init-top/ORDER").read_text().split("\n")
        assert order[0].startswith("/scripts/init-top/0vmi-modprobe "), order
        assert any(line.startswith("/scripts/init-top/udev ") for line in order), order
        linked = subprocess.run(
            ["chroot", str(unpacked), "/bin/sh", "-c", "/scripts/init-top/0vmi-modprobe && /sbin/modprobe --version"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert linked.returncode == 0 and linked.stdout.startswith("kmod version"), linked
        assert root.is_file("/usr/sbin/modprobe") or root.is_file("/sbin/modprobe")  # the root is untouched

        for gen in MASKED_GENERATORS:
            assert _masked(root, f"/etc/systemd/system-generators/{gen}"), gen
        # grub-common.service only clears a failed-boot flag ("recordfail") the menu entries never set here
        grub_cfg = root.read_text("/boot/grub/grub.cfg") or ""
        assert "menuentry" in grub_cfg and not re.search(r"^\s*recordfail\s*$", grub_cfg, re.M)
        assert _masked(root, "/etc/systemd/system/grub-common.service")
        # sshd starts once: no `sshd -t` run before it; reloading still tests the configuration first
        drop_in = root.read_text("/etc/systemd/system/ssh.service.d/10-vmi-no-pretest.conf") or ""
        assert "\n[Service]\nExecStartPre=\n" in drop_in, drop_in
        shipped_units = [root.read_text(f"{d}/ssh.service") for d in ("/usr/lib/systemd/system", "/lib/systemd/system")]
        unit = next((text for text in shipped_units if text), "")
        assert unit and "ExecStartPre=/usr/sbin/sshd -t" in unit and "ExecReload=/usr/sbin/sshd -t" in unit, unit
        wants = root.listdir("/etc/systemd/system/timers.target.wants") + root.listdir(
            "/etc/systemd/system/multi-user.target.wants"
        )
        assert "e2scrub_all.timer" not in wants and "e2scrub_reap.service" not in wants, wants

        text = root.read_text("/etc/cloud/cloud.cfg.d/02_vmi_boot.cfg")
        assert text is not None
        moved = yaml.safe_load(text)
        init, config = _module_names(moved["cloud_init_modules"]), _module_names(moved["cloud_config_modules"])
        assert "growpart" not in init and "resizefs" not in init
        assert config[:2] == ["growpart", "resizefs"]
        # nothing else was dropped: the image's own module lists, only those two moved
        shipped = yaml.safe_load(root.read_text("/etc/cloud/cloud.cfg") or "")
        assert sorted(init + config) == sorted(
            _module_names(shipped["cloud_init_modules"]) + _module_names(shipped["cloud_config_modules"])
        )
        # what sshd waits for stays before it (cloud-init accepts either spelling of a module name)
        assert {"ssh", "users_groups"} <= {m.replace("-", "_") for m in init}, init
        drop_in = root.read_text("/etc/systemd/system/cloud-config.service.d/10-vmi-after-sshd.conf") or ""
        assert "\nAfter=ssh.service sshd.service\n" in drop_in, drop_in  # the stage starts once sshd listens
