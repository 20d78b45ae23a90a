"""Firmware as a definition field: the schema, the QEMU machine each firmware boots (one function for
Packer, the accelerator probe and the boot tests), and what the OVF descriptor tells importers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from lxml import etree

from pipeline.appliance import Firmware, find_appliance, load_appliance
from pipeline.builder.accel import OVMF_CODE, Accel, qemu_machine
from pipeline.errors import ConfigError
from pipeline.formats.ovf import DiskRef, HardwareProfile, build_descriptor, descriptor_firmware, schema_problems
from pipeline.package.verify import descriptor_facts

ROOT = Path(__file__).resolve().parents[2]
DISK = DiskRef("d-disk1.vmdk", 1000, 3 * 1024**3)


def test_baselines_declare_their_firmware() -> None:
    templates = ROOT / "packer_templates"
    assert find_appliance(templates, "debian-12").firmware is Firmware.BIOS  # the default: MBR, as before
    debian13 = find_appliance(templates, "debian-13")
    assert debian13.firmware is Firmware.HYBRID
    assert debian13.firmware.boots_bios and debian13.firmware.boots_uefi
    assert not Firmware.UEFI.boots_bios and not Firmware.BIOS.boots_uefi


def test_an_unknown_firmware_is_one_line_naming_file_and_field(tmp_path: Path) -> None:
    folder = tmp_path / "debian-13"
    folder.mkdir()
    data = yaml.safe_load((ROOT / "packer_templates/debian-13/appliance.yaml").read_text())
    data["firmware"] = "efi"
    (folder / "appliance.yaml").write_text(yaml.safe_dump(data))
    (folder / "debian-13.pkr.hcl").write_text("")
    with pytest.raises(ConfigError) as err:
        load_appliance(folder)
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith(f"{folder / 'appliance.yaml'}: firmware: ")
    assert "'efi'" in err.value.problems[0]


def test_uefi_machine_is_q35_with_ovmf_as_pflash(tmp_path: Path) -> None:
    bios = qemu_machine(Accel.KVM, 2, 1024)
    assert bios.argv() == ["-machine", "type=pc,accel=kvm", "-cpu", "host", "-m", "1024M", "-smp", "2"]
    vars_copy = tmp_path / "vars.fd"
    for accel, machine in (
        (Accel.KVM, "type=q35,pflash0=vmi-ovmf-code,pflash1=vmi-ovmf-vars,accel=kvm"),
        (Accel.TCG, "type=q35,memory-backend=vmi-ram,pflash0=vmi-ovmf-code,pflash1=vmi-ovmf-vars"),
    ):
        uefi = qemu_machine(accel, 2, 1024, ovmf_vars=vars_copy)
        assert uefi.argv()[:2] == ["-machine", machine]
        assert uefi.machine_args()[-2:] == [
            ["-blockdev", f"driver=file,filename={OVMF_CODE},node-name=vmi-ovmf-code,read-only=on"],
            ["-blockdev", f"driver=file,filename={vars_copy},node-name=vmi-ovmf-vars"],
        ]
        # Packer gets the same pairs: its own -machine is replaced by the one in qemuargs
        assert json.loads(uefi.template_variables()["machine_qemuargs"]) == uefi.machine_args()
    assert not any(arg == "-blockdev" for arg in bios.argv())


@pytest.mark.parametrize("profile", list(HardwareProfile))
def test_ovf_says_efi_only_for_uefi_only_images(profile: HardwareProfile) -> None:
    base = find_appliance(ROOT / "packer_templates", "debian-13")
    for firmware, expected in ((Firmware.UEFI, "efi"), (Firmware.HYBRID, "bios"), (Firmware.BIOS, "bios")):
        appliance = dataclasses.replace(base, firmware=firmware)
        tree = etree.ElementTree(etree.fromstring(build_descriptor(appliance, "2026.12.02", DISK, profile)))
        assert descriptor_firmware(tree) == expected
        assert schema_problems(tree) == []
        assert descriptor_facts(tree).problems == []  # what verify-ova checks: both firmwares accepted
    uefi = build_descriptor(dataclasses.replace(base, firmware=Firmware.UEFI), "2026.12.02", DISK, profile).decode()
    assert '<vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>' in uefi


def test_a_descriptor_with_a_nonsense_firmware_is_named() -> None:
    base = find_appliance(ROOT / "packer_templates", "debian-13")
    text = build_descriptor(dataclasses.replace(base, firmware=Firmware.UEFI), "1", DISK).replace(b'"efi"', b'"uefi"')
    with pytest.raises(ConfigError, match="vmw:Config firmware: 'uefi' is not efi or bios"):
        descriptor_firmware(etree.ElementTree(etree.fromstring(text)))


def test_the_manifest_records_firmware_and_glance_properties(tmp_path: Path) -> None:
    from pipeline.builder import image_properties
    from pipeline.manifest import Artifact, BaseRef, BuildManifest

    base = find_appliance(ROOT / "packer_templates", "debian-13")
    assert image_properties(dataclasses.replace(base, firmware=Firmware.UEFI)) == {"hw_firmware_type": "uefi"}
    assert image_properties(base) == {} == image_properties(dataclasses.replace(base, firmware=Firmware.BIOS))
    manifest = BuildManifest(
        appliance="debian-13", version="1", created="2026-12-02T00:00:00Z", inputs_digest="0" * 64, inputs={},
        git_commit=None, tools={}, accel="tcg", os={"family": "linux", "name": "Debian", "version": "13"},
        arch="x86_64", base=BaseRef("bootstrap", "trixie", "sha256:" + "0" * 64), packages=(),
        artifacts=(Artifact("build/d.qcow2", "build-disk", "qcow2", 1, "3" * 64, "4" * 128),), timings={},
        firmware="uefi", image_properties={"hw_firmware_type": "uefi"},
    )  # fmt: skip
    manifest.save(tmp_path)
    again = BuildManifest.load(tmp_path)
    assert (again.firmware, again.image_properties) == ("uefi", {"hw_firmware_type": "uefi"})
    older = dataclasses.replace(manifest, firmware=None, image_properties={})
    assert "firmware" not in older.to_dict() and "image_properties" not in older.to_dict()
    bad = json.loads(manifest.to_json())
    bad["image_properties"] = {"Bad Key": "x"}
    with pytest.raises(ConfigError):
        BuildManifest.from_dict(bad, "m.json")
