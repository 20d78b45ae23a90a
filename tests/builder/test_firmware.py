"""Firmware as a definition field: the schema, the QEMU machine each firmware boots (one function for
Packer, the accelerator probe and the boot tests), and what the OVF descriptor tells importers."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import yaml
from lxml import etree

from pipeline.appliance import Firmware, find_appliance, load_appliance
from pipeline.builder.accel import (
    OVMF_CODE_NAME,
    OVMF_DIRS,
    OVMF_VARS_NAME,
    Accel,
    find_ovmf,
    ovmf_vars_copy,
    qemu_machine,
)
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
            ["-blockdev", f"driver=file,filename={find_ovmf().code},node-name=vmi-ovmf-code,read-only=on"],
            ["-blockdev", f"driver=file,filename={vars_copy},node-name=vmi-ovmf-vars"],
        ]
        # Packer gets the same pairs: its own -machine is replaced by the one in qemuargs
        assert json.loads(uefi.template_variables()["machine_qemuargs"]) == uefi.machine_args()
    assert not any(arg == "-blockdev" for arg in bios.argv())


def test_the_firmware_is_a_current_ovmf() -> None:
    """What every UEFI build and boot test here runs after the README's set-up, no setting: a current
    OVMF (Debian 13's edk2 2025.02 or newer), which scripts/setup fetches into the virtualenv where the
    system's is older (Debian 12's 2022.11 takes twice as long to start under TCG)."""
    ovmf = find_ovmf()
    assert ovmf.code.parent in OVMF_DIRS
    assert ovmf.version.split("-")[0] >= "2025.02", ovmf.describe()
    if ovmf.code.parent == Path(sys.prefix) / "share" / "OVMF":
        assert (ovmf.code.parent / "VERSION").read_text().strip() == ovmf.version
    for volume in (ovmf.code, ovmf.vars):  # UEFI firmware volumes: the signature at offset 40
        assert volume.read_bytes()[40:44] == b"_FVH", f"{volume} is not a firmware volume"


def test_the_first_folder_with_both_files_wins(tmp_path: Path) -> None:
    only_code, both, system = tmp_path / "venv", tmp_path / "fetched", tmp_path / "system"
    for folder in (only_code, both, system):
        folder.mkdir()
        (folder / OVMF_CODE_NAME).write_bytes(b"code " + folder.name.encode())
    for folder in (both, system):
        (folder / OVMF_VARS_NAME).write_bytes(b"vars " + folder.name.encode())
    (both / "VERSION").write_text("2025.02-8+deb13u1\n")
    ovmf = find_ovmf((only_code, both, system))
    assert (ovmf.code, ovmf.vars, ovmf.version) == (both / OVMF_CODE_NAME, both / OVMF_VARS_NAME, "2025.02-8+deb13u1")
    assert find_ovmf((only_code, system)).code == system / OVMF_CODE_NAME


def test_no_firmware_is_one_line_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        find_ovmf((tmp_path / "a", tmp_path / "b"))
    assert err.value.problems == [f"{tmp_path / 'b' / OVMF_CODE_NAME}: UEFI firmware not installed"]


def test_every_vm_gets_its_own_copy_of_the_variable_store(tmp_path: Path) -> None:
    first, second = ovmf_vars_copy(tmp_path / "a" / "vars.fd"), ovmf_vars_copy(tmp_path / "b" / "vars.fd")
    first.write_bytes(b"written by one VM")
    assert second.read_bytes() == find_ovmf().vars.read_bytes() != first.read_bytes()


def test_a_machine_can_boot_another_ovmf(tmp_path: Path) -> None:
    """What bench/boot_timing.py --ovmf does to compare two firmware builds on one disk."""
    other = tmp_path / "other"
    other.mkdir()
    (other / OVMF_CODE_NAME).write_bytes(b"other code")
    (other / OVMF_VARS_NAME).write_bytes(b"other vars")
    chosen = find_ovmf((other,))
    store = ovmf_vars_copy(tmp_path / "vm" / "vars.fd", chosen)
    assert store.read_bytes() == b"other vars"
    machine = dataclasses.replace(qemu_machine(Accel.TCG, 2, 1024, ovmf_vars=store), ovmf_code=chosen.code)
    assert machine.firmware_args()[0] == [
        "-blockdev", f"driver=file,filename={other / OVMF_CODE_NAME},node-name=vmi-ovmf-code,read-only=on"
    ]  # fmt: skip
    assert f"filename={find_ovmf().code}," in qemu_machine(Accel.TCG, ovmf_vars=store).firmware_args()[0][1]


def test_a_uefi_builds_cache_key_carries_the_firmware_it_builds_under() -> None:
    from pipeline.builder import tool_versions

    base = find_appliance(ROOT / "packer_templates", "debian-13")
    assert tool_versions(dataclasses.replace(base, firmware=Firmware.UEFI))["ovmf"] == find_ovmf().version
    assert "ovmf" not in tool_versions(base)  # hybrid builds under SeaBIOS: another OVMF changes nothing


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
