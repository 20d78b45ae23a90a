"""The descriptor: schema-valid for every hardware profile, golden bytes, the rules importers apply."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from lxml import etree

from pipeline.appliance import Appliance, OsFamily, OsInfo
from pipeline.formats.ovf import (
    OVF_NS,
    RASD_NS,
    STREAM_VMDK_URI,
    VSSD_NS,
    DiskRef,
    HardwareProfile,
    UnsafeXml,
    build_descriptor,
    os_code,
    parse_descriptor,
    schema_problems,
)
from pipeline.package.verify import descriptor_facts

GOLDEN = Path(__file__).parent / "data" / "debian-12.ovf"
DISK = DiskRef("debian-12-2026.11.22-disk1.vmdk", 123_456_789, 3 * 1024**3)
NS = {"ovf": OVF_NS, "rasd": RASD_NS, "vssd": VSSD_NS}


def _tree(appliance: Appliance, profile: HardwareProfile = HardwareProfile.PORTABLE) -> etree._ElementTree:
    return parse_descriptor(build_descriptor(appliance, "2026.11.22", DISK, profile))


@pytest.mark.parametrize("profile", list(HardwareProfile))
def test_every_profile_validates_against_the_dmtf_schema(appliance: Appliance, profile: HardwareProfile) -> None:
    tree = _tree(appliance, profile)
    assert schema_problems(tree) == []
    assert descriptor_facts(tree).problems == []


def test_golden_descriptor(appliance: Appliance) -> None:
    """The exact bytes for debian-12; regenerate with VMI_UPDATE_GOLDEN=1 after a deliberate change."""
    data = build_descriptor(appliance, "2026.11.22", DISK)
    if os.environ.get("VMI_UPDATE_GOLDEN"):
        GOLDEN.write_bytes(data)
    assert data == GOLDEN.read_bytes()


def test_descriptor_is_deterministic(appliance: Appliance) -> None:
    assert build_descriptor(appliance, "1.0", DISK) == build_descriptor(appliance, "1.0", DISK)
    assert build_descriptor(appliance, "1.0", DISK) != build_descriptor(appliance, "1.1", DISK)


@pytest.mark.parametrize("profile", list(HardwareProfile))
def test_hardware_section_follows_the_importers_rules(appliance: Appliance, profile: HardwareProfile) -> None:
    tree = _tree(appliance, profile)
    items = tree.findall(".//ovf:VirtualHardwareSection/ovf:Item", NS)
    ids = [i.findtext("rasd:InstanceID", namespaces=NS) for i in items]
    assert len(ids) == len(set(ids))
    for item in items:
        names = [etree.QName(child).localname for child in item]
        assert names == sorted(names), "rasd children must be in the CIM schema's order"
        assert item.findtext("rasd:ElementName", namespaces=NS)
    by_type = {i.findtext("rasd:ResourceType", namespaces=NS): i for i in items}
    assert set(by_type) >= {"3", "4", "10", "17"}
    memory = by_type["4"]
    assert memory.findtext("rasd:AllocationUnits", namespaces=NS) == "byte * 2^20"
    assert memory.findtext("rasd:VirtualQuantity", namespaces=NS) == str(appliance.hardware.ram_recommended_mb)
    assert by_type["3"].findtext("rasd:VirtualQuantity", namespaces=NS) == str(appliance.hardware.cores_recommended)
    disk = by_type["17"]
    parent_id = disk.findtext("rasd:Parent", namespaces=NS)
    parent = next(i for i in items if i.findtext("rasd:InstanceID", namespaces=NS) == parent_id)
    assert parent.findtext("rasd:ResourceType", namespaces=NS) in {"5", "6", "20"}
    assert disk.findtext("rasd:HostResource", namespaces=NS) == "ovf:/disk/vmdisk1"
    assert by_type["10"].findtext("rasd:Connection", namespaces=NS) == "VM Network"
    assert tree.find("ovf:NetworkSection/ovf:Network", NS).get(f"{{{OVF_NS}}}name") == "VM Network"
    system_type = tree.findtext(".//vssd:VirtualSystemType", namespaces=NS)
    assert system_type == ("virtualbox-2.2" if profile is HardwareProfile.VIRTUALBOX else "vmx-11")


def test_references_disk_and_product(appliance: Appliance) -> None:
    tree = _tree(appliance)
    file = tree.find("ovf:References/ovf:File", NS)
    disk = tree.find("ovf:DiskSection/ovf:Disk", NS)
    q = lambda name: f"{{{OVF_NS}}}{name}"  # noqa: E731
    assert (file.get(q("href")), file.get(q("size"))) == (DISK.href, str(DISK.size))
    assert disk.get(q("capacity")) == str(DISK.capacity)
    assert disk.get(q("capacityAllocationUnits")) == "byte"
    assert disk.get(q("format")) == STREAM_VMDK_URI
    assert disk.get(q("fileRef")) == file.get(q("id"))
    product = tree.find(".//ovf:ProductSection", NS)
    assert product.findtext("ovf:Product", namespaces=NS) == appliance.title
    assert product.findtext("ovf:Vendor", namespaces=NS) == appliance.vendor
    assert product.findtext("ovf:Version", namespaces=NS) == "2026.11.22"
    assert product.findtext("ovf:ProductUrl", namespaces=NS) == appliance.homepage
    assert tree.findtext(".//ovf:VirtualSystem/ovf:Name", namespaces=NS) == "debian-12"
    assert tree.find(".//ovf:OperatingSystemSection", NS).get(q("id")) == "96"


@pytest.mark.parametrize(
    ("family", "name", "code"),
    [
        (OsFamily.LINUX, "Debian", 96),
        (OsFamily.LINUX, "Ubuntu", 94),
        (OsFamily.LINUX, "CentOS", 107),
        (OsFamily.LINUX, "Alpine", 101),
        (OsFamily.BSD, "FreeBSD", 78),
        (OsFamily.WINDOWS, "Windows Server", 102),
    ],
)
def test_operating_system_code(appliance: Appliance, family: OsFamily, name: str, code: int) -> None:
    other = dataclasses.replace(appliance, os=OsInfo(family, name, "1", None))
    assert os_code(other) == code


def test_metadata_is_escaped_not_templated(appliance: Appliance) -> None:
    hostile = dataclasses.replace(appliance, title='A & B <x> "q"', description="</Annotation><Evil/>", vendor="V&V")
    tree = parse_descriptor(build_descriptor(hostile, "1", DISK))
    assert tree.findtext(".//ovf:ProductSection/ovf:Product", namespaces=NS) == 'A & B <x> "q"'
    assert tree.findtext(".//ovf:Annotation", namespaces=NS) == "</Annotation><Evil/>"
    assert tree.find(".//Evil") is None
    assert schema_problems(tree) == []


def _mutate(appliance: Appliance, xpath: str, action: str) -> etree._ElementTree:
    tree = _tree(appliance)
    el = tree.find(xpath, NS)
    assert el is not None
    if action == "remove":
        el.getparent().remove(el)
    elif action == "swap-first-two":
        first, second = el[0], el[1]
        el.remove(first)
        second.addnext(first)
    else:
        del el.attrib[f"{{{OVF_NS}}}{action}"]
    return tree


@pytest.mark.parametrize(
    ("xpath", "action"),
    [
        ("ovf:References", "remove"),
        (".//ovf:Item/rasd:ElementName", "remove"),
        (".//ovf:Item", "swap-first-two"),
        ("ovf:DiskSection/ovf:Info", "remove"),
        ("ovf:DiskSection/ovf:Disk", "capacity"),
        ("ovf:References/ovf:File", "href"),
        (".//ovf:OperatingSystemSection", "id"),
    ],
)
def test_schema_rejects_what_importers_reject(appliance: Appliance, xpath: str, action: str) -> None:
    assert schema_problems(_mutate(appliance, xpath, action))


VALID_SAMPLES = [
    "cot_csr1000v.ovf",
    "cot_input.ovf",
    "cot_iosv.ovf",
    "cot_minimal.ovf",
    "cot_vmware.ovf",
    "kiwi_vagrant_virtualbox.ovf",
    "osbuild_rendered.ovf",
    "v2v_test-i-ova.ovf",
    "v2v_test-i-ova-formats.ovf",
    "v2v_test-i-ova-snapshots.ovf",
    "v2v_test-i-ova-two-disks.ovf",
]
INVALID_SAMPLES = {
    "cot_invalid.ovf": "schema: line",
    "cot_ubuntu.2.0.ovf": "not an OVF 1.x envelope",
    "cot_v0.9.ovf": "not an OVF 1.x envelope",
}


@pytest.mark.parametrize("name", VALID_SAMPLES)
def test_other_tools_valid_descriptors_are_accepted(samples_dir: Path, name: str) -> None:
    facts = descriptor_facts(parse_descriptor((samples_dir / name).read_bytes()))
    assert facts.problems == []


@pytest.mark.parametrize("name", sorted(INVALID_SAMPLES))
def test_other_tools_invalid_descriptors_are_rejected(samples_dir: Path, name: str) -> None:
    problems = descriptor_facts(parse_descriptor((samples_dir / name).read_bytes())).problems
    assert any(INVALID_SAMPLES[name] in p for p in problems), problems


def test_every_sample_is_classified(samples_dir: Path) -> None:
    assert {p.name for p in samples_dir.glob("*.ovf")} == set(VALID_SAMPLES) | set(INVALID_SAMPLES)


@pytest.mark.parametrize(
    "xml",
    [
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>',
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]><r>&b;</r>',
        b"<r><unclosed></r>",
        b"<r>" + b"x" * (1024 * 1024) + b"</r>",
    ],
    ids=["xxe", "entity-bomb", "malformed", "oversized"],
)
def test_unsafe_xml_is_refused_before_use(xml: bytes) -> None:
    with pytest.raises(UnsafeXml):
        parse_descriptor(xml)
