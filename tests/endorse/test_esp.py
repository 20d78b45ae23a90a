"""The audit reads a GPT disk's EFI system partition (vfat, copied out with mtools, never mounted) and
checks what it holds: a boot loader at the removable path, nothing else but EFI binaries, shim's CSV
and GRUB's stub config. Each broken ESP fails only the ``esp`` check, naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.appliance import find_appliance
from pipeline.audit.disk import ESP_TYPE_GUID, find_esp, open_root, partitions
from pipeline.audit.report import CheckStatus, SecuritySource, audit_disk, security_source
from pipeline.manifest import BuildManifest
from tests.endorse.disks import PACKAGES, PE_STUB, TEST_KEY, good_esp, good_rootfs, make_disk, write

ROOT = Path(__file__).resolve().parents[2]


def _audit(tmp_path: Path, mirror: str, esp: Path):  # type: ignore[no-untyped-def]
    disk = make_disk(good_rootfs(tmp_path / "rootfs"), tmp_path / "disk.qcow2", table="gpt-esp", esp=esp)
    return audit_disk(
        disk,
        "qcow2",
        scratch=tmp_path / "scratch",
        packages=PACKAGES,
        security=SecuritySource(mirror, "bookworm-security", "amd64"),
        appliance="test",
        version="1",
    )


def test_the_esp_is_found_and_read_without_mounting(tmp_path: Path) -> None:
    disk = make_disk(good_rootfs(tmp_path / "rootfs"), tmp_path / "disk.img", table="gpt-esp", fmt="raw")
    esp = find_esp(disk)
    assert esp is not None and esp.number == 2 and esp.type_guid == ESP_TYPE_GUID
    assert [p.is_esp for p in partitions(disk)] == [False, True, False]
    with open_root(disk, "raw", tmp_path / "scratch") as (root, info):
        assert root.esp is not None
        assert root.esp.read_bytes("/EFI/BOOT/BOOTX64.EFI") == PE_STUB
        assert (root.esp.read_text("/EFI/debian/grub.cfg") or "").startswith("search.fs_uuid ")
        assert info.partition.number == 3
    assert not list((tmp_path / "scratch").iterdir())


def test_an_mbr_disk_has_no_esp_and_passes_the_check(tmp_path: Path, mirror: str) -> None:
    disk = make_disk(good_rootfs(tmp_path / "rootfs"), tmp_path / "disk.qcow2")
    security = SecuritySource(mirror, "bookworm-security", "amd64")
    report = audit_disk(disk, "qcow2", scratch=tmp_path / "s", packages=PACKAGES, security=security, appliance="t",
                        version="1")  # fmt: skip
    assert report.check("esp").evidence == ("no EFI system partition (a BIOS disk)",)


def test_a_good_esp_passes(tmp_path: Path, mirror: str) -> None:
    report = _audit(tmp_path, mirror, good_esp(tmp_path / "esp"))
    assert report.passed, report.summary()
    assert report.check("esp").evidence == ("ESP holds 3 file(s): boot loader /EFI/BOOT/BOOTX64.EFI",)


def _without_loader(esp: Path) -> None:
    (esp / "EFI/BOOT/BOOTX64.EFI").unlink()


BROKEN_ESP = {
    "no boot loader": (_without_loader, "ESP: no boot loader at /EFI/BOOT/BOOTX64.EFI or /EFI/BOOT/BOOTAA64.EFI"),
    "secure boot key": (
        lambda esp: write(esp, "EFI/debian/db.key", "x"), "ESP /EFI/debian/db.key: key or certificate file"),
    "private key in a binary": (
        lambda esp: write(esp, "EFI/debian/mmx64.efi", PE_STUB + TEST_KEY.encode()),
        "ESP /EFI/debian/mmx64.efi: holds a private key"),
    "startup script": (
        lambda esp: write(esp, "startup.nsh", "fs0:\\EFI\\evil.efi\n"), "ESP /startup.nsh: outside /EFI"),
    "grub config that boots something else": (
        lambda esp: write(esp, "EFI/debian/grub.cfg", "linux /vmlinuz init=/bin/sh\n"),
        "ESP /EFI/debian/grub.cfg: GRUB config does more than find the root filesystem "
        "('linux /vmlinuz init=/bin/sh')"),
    "not a PE binary": (
        lambda esp: write(esp, "EFI/BOOT/fbx64.efi", "#!/bin/sh\n"), "ESP /EFI/BOOT/fbx64.efi: not an EFI (PE) binary"),
    "stray config": (
        lambda esp: write(esp, "EFI/debian/cloud.cfg", "password: x\n"),
        "ESP /EFI/debian/cloud.cfg: stray file (config, script or data)"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BROKEN_ESP), ids=list(BROKEN_ESP))
def test_each_broken_esp_fails_only_the_esp_check(tmp_path: Path, mirror: str, case: str) -> None:
    mutate, evidence = BROKEN_ESP[case]
    esp = good_esp(tmp_path / "esp")
    mutate(esp)
    report = _audit(tmp_path, mirror, esp)
    assert [c.id for c in report.failures] == ["esp"], report.summary()
    assert evidence in report.check("esp").evidence, report.check("esp").evidence


def test_an_esp_that_is_not_fat_is_refused(tmp_path: Path) -> None:
    disk = make_disk(good_rootfs(tmp_path / "rootfs"), tmp_path / "disk.img", table="gpt-esp", fmt="raw")
    esp = find_esp(disk)
    assert esp is not None
    with open(disk, "r+b") as f:
        f.seek(esp.start)
        f.write(bytes(4096))
    with pytest.raises(Exception) as err, open_root(disk, "raw", tmp_path / "scratch"):
        pass
    assert f"{disk}: the EFI system partition (partition 2) is not a readable FAT filesystem" in str(err.value)


@pytest.mark.slow
@pytest.mark.build
def test_debian_13_reference_passes_without_waivers(
    reference_build_13: tuple[Path, BuildManifest], tmp_path: Path
) -> None:
    """The real hybrid debian-13 build: every check passes with no waiver, the ESP's included, and the
    pending-updates check reads trixie-security."""
    version_dir, manifest = reference_build_13
    appliance = find_appliance(ROOT / "packer_templates", "debian-13", ROOT / "provisioners")
    security = security_source(appliance, manifest.arch)
    assert security is not None and security.suite == "trixie-security"
    disk = manifest.artifact("build-disk")
    report = audit_disk(
        version_dir / disk.name,
        disk.format,
        scratch=tmp_path,
        packages=manifest.packages,
        security=security,
        waivers={},
        appliance="debian-13",
        version=manifest.version,
    )
    assert [c.id for c in report.checks if c.result != CheckStatus.PASS] == [], report.summary()
    assert report.check("esp").evidence == ("ESP holds 2 file(s): boot loader /EFI/BOOT/BOOTX64.EFI",)
