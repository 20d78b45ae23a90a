"""The firmware an image needs, in the OVF fields importers read: VMware's ``vmw:Config firmware`` and
VirtualBox's ``vbox:Machine``/``Firmware``; ``verify-ova`` accepts either form, refuses a conflict."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from lxml import etree

from pipeline.appliance import Appliance, Firmware
from pipeline.errors import ConfigError, VerificationError
from pipeline.formats.ovf import VBOX_NS, DiskRef, HardwareProfile, build_descriptor, descriptor_firmware
from pipeline.package.verify import descriptor_facts, verify_ova

from .helpers import ova_members, with_manifest, write_ova

DISK = DiskRef("d-disk1.vmdk", 1000, 3 * 1024**3)
VMW = b'<vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>'


def _tree(data: bytes) -> etree._ElementTree:
    return etree.ElementTree(etree.fromstring(data))


@pytest.mark.parametrize("profile", [HardwareProfile.PORTABLE, HardwareProfile.VIRTUALBOX])
def test_a_uefi_image_tells_virtualbox_in_its_own_section(appliance: Appliance, profile: HardwareProfile) -> None:
    uefi = dataclasses.replace(appliance, firmware=Firmware.UEFI)
    tree = _tree(build_descriptor(uefi, "2026.12.02", DISK, profile))
    (machine,) = tree.getroot().iter(f"{{{VBOX_NS}}}Machine")
    assert machine.getparent().tag.endswith("}VirtualSystem")
    assert machine.get("OSType") == "Debian_64"
    assert [f.get("type") for f in machine.iter("{*}Firmware")] == ["EFI"]
    # VirtualBox takes the disk from here once the section exists: it must name the DiskSection's disk
    (image,) = machine.iter("{*}Image")
    (disk,) = tree.getroot().iter("{*}Disk")
    assert image.get("uuid") == "{" + disk.get(f"{{{VBOX_NS}}}uuid") + "}"
    assert descriptor_firmware(tree) == "efi" and descriptor_facts(tree).problems == []


@pytest.mark.parametrize("firmware", [Firmware.BIOS, Firmware.HYBRID])
def test_bios_and_hybrid_images_leave_the_importers_default(appliance: Appliance, firmware: Firmware) -> None:
    for profile in HardwareProfile:
        data = build_descriptor(dataclasses.replace(appliance, firmware=firmware), "1", DISK, profile)
        assert b"virtualbox.org" not in data and b"vmw:Config" not in data
        assert descriptor_firmware(_tree(data)) == "bios"


def test_vmware_profile_keeps_to_vmwares_field(appliance: Appliance) -> None:
    data = build_descriptor(dataclasses.replace(appliance, firmware=Firmware.UEFI), "1", DISK, HardwareProfile.VMWARE)
    assert VMW in data and b"virtualbox.org" not in data


def test_virtualboxs_own_export_reads_as_bios(samples_dir: Path) -> None:
    """kiwi's Vagrant box carries a vbox:Machine without a Firmware element: BIOS, as VirtualBox assumes."""
    tree = _tree((samples_dir / "kiwi_vagrant_virtualbox.ovf").read_bytes())
    assert descriptor_firmware(tree) == "bios"


def _repackaged(ova: Path, tmp_path: Path, descriptor: bytes) -> Path:
    """Our OVA with its descriptor replaced (and the manifest redone to match)."""
    members = list(ova_members(ova).items())
    (ovf_name, _), (mf_name, _), *files = members
    return write_ova(
        tmp_path / "edited.ova",
        [(ovf_name, descriptor), (mf_name, with_manifest(ovf_name, descriptor, files)), *files],
    )


def _uefi_descriptor(ova: Path, appliance: Appliance) -> bytes:
    tree = _tree(next(iter(ova_members(ova).values())))
    (file_el,) = tree.getroot().iter("{*}File")
    (disk_el,) = tree.getroot().iter("{*}Disk")
    ns = "{http://schemas.dmtf.org/ovf/envelope/1}"
    disk = DiskRef(file_el.get(ns + "href"), int(file_el.get(ns + "size")), int(disk_el.get(ns + "capacity")))
    return build_descriptor(dataclasses.replace(appliance, firmware=Firmware.UEFI), "2026.11.22", disk)


def test_verify_ova_accepts_either_form_and_refuses_a_conflict(
    ova_path: Path, appliance: Appliance, tmp_path: Path
) -> None:
    both = _uefi_descriptor(ova_path, appliance)
    assert VMW in both and b'<Firmware type="EFI"/>' in both
    assert "sound OVA" in verify_ova(_repackaged(ova_path, tmp_path, both), qemu_check=False).summary()
    vbox_only = both.replace(VMW, b"")
    assert "sound OVA" in verify_ova(_repackaged(ova_path, tmp_path, vbox_only), qemu_check=False).summary()
    vmw_only = both.replace(b'<Firmware type="EFI"/>', b"")
    assert "sound OVA" in verify_ova(_repackaged(ova_path, tmp_path, vmw_only), qemu_check=False).summary()
    conflict = both.replace(b'<Firmware type="EFI"/>', b'<Firmware type="BIOS"/>')
    with pytest.raises(VerificationError) as err:
        verify_ova(_repackaged(ova_path, tmp_path, conflict), qemu_check=False)
    assert "firmware: vbox:Machine Firmware says bios but vmw:Config firmware says efi" in str(err.value)


def test_a_firmware_virtualbox_does_not_know_is_named(appliance: Appliance) -> None:
    data = build_descriptor(dataclasses.replace(appliance, firmware=Firmware.UEFI), "1", DISK)
    with pytest.raises(ConfigError, match="vbox:Machine Firmware type: 'UEFI' is not one of BIOS, EFI"):
        descriptor_firmware(_tree(data.replace(b'type="EFI"', b'type="UEFI"')))
