"""The OVF 1.x descriptor: built with lxml from the appliance metadata, parsed safely, schema-checked.

One descriptor shape serves every consumer we know (VirtualBox, VMware, virt-v2v, Glance); a
``HardwareProfile`` only swaps the hardware family and the controller/NIC subtypes that the
importers disagree about (builders-and-ovf.md §3.5).
"""

from __future__ import annotations

import enum
import functools
import uuid
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from pipeline.appliance import Appliance, Arch, Firmware, OsFamily
from pipeline.errors import ConfigError

OVF_NS = "http://schemas.dmtf.org/ovf/envelope/1"
RASD_NS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VSSD_NS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
VMW_NS = "http://www.vmware.com/schema/ovf"
VBOX_NS = "http://www.virtualbox.org/ovf/machine"
DMTF_PREFIX = "http://schemas.dmtf.org/"
NSMAP = {None: OVF_NS, "ovf": OVF_NS, "rasd": RASD_NS, "vssd": VSSD_NS, "vmw": VMW_NS}

STREAM_VMDK_URI = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
SCHEMA_FILE = Path(__file__).resolve().parents[2] / "ovf" / "schema" / "dsp8023_1.1.1.xsd"
MAX_DESCRIPTOR_BYTES = 1024 * 1024  # a real descriptor is a few KiB; bigger is an attack or a mistake

# Namespace for every id we derive (uuid5): the same name and version always give the same ids.
ID_NAMESPACE = uuid.UUID("6c1f7a52-3d0e-5b8e-9a57-0b9f64c1e2d4")


class ResourceType(enum.IntEnum):
    """``rasd:ResourceType`` codes (CIM_ResourceAllocationSettingData)."""

    PROCESSOR = 3
    MEMORY = 4
    IDE_CONTROLLER = 5
    SCSI_CONTROLLER = 6
    ETHERNET = 10
    DISK = 17
    OTHER_STORAGE = 20  # SATA, NVMe, virtio-scsi


CONTROLLER_TYPES = frozenset({ResourceType.IDE_CONTROLLER, ResourceType.SCSI_CONTROLLER, ResourceType.OTHER_STORAGE})


class HardwareProfile(enum.StrEnum):
    """Which importer family the hardware section is tuned for."""

    PORTABLE = "portable"  # VMware >= 6.0, VirtualBox, virt-v2v: SATA AHCI + E1000, vmx-11
    VMWARE = "vmware"  # vSphere: LSI Logic SCSI + VMXNET3, vmx-11, vmw:osType
    VIRTUALBOX = "virtualbox"  # VirtualBox's own family name and subtypes


def hardware_profile(name: str) -> HardwareProfile:
    """The profile called ``name``; ``ConfigError`` listing the choices otherwise."""
    try:
        return HardwareProfile(name)
    except ValueError as e:
        choices = ", ".join(p.value for p in HardwareProfile)
        raise ConfigError(f"--profile: {name!r} is not one of {choices}") from e


@dataclass(frozen=True)
class ProfileSpec:
    system_type: str
    controller_type: ResourceType
    controller_subtype: str
    nic_subtype: str
    vmdk_adapter: str  # qemu-img ``adapter_type`` for the disk, matching the controller
    vmware_os_type: bool


PROFILES: dict[HardwareProfile, ProfileSpec] = {
    HardwareProfile.PORTABLE: ProfileSpec(
        "vmx-11", ResourceType.OTHER_STORAGE, "vmware.sata.ahci", "E1000", "ide", False
    ),
    HardwareProfile.VMWARE: ProfileSpec(
        "vmx-11", ResourceType.SCSI_CONTROLLER, "lsilogic", "VmxNet3", "lsilogic", True
    ),
    HardwareProfile.VIRTUALBOX: ProfileSpec(
        "virtualbox-2.2", ResourceType.OTHER_STORAGE, "AHCI", "E1000", "ide", False
    ),
}

# CIM_OperatingSystem.OSType codes (64-bit variants) by lower-cased OS name; builders-and-ovf.md §2.3.
_OS_CODES_64 = {
    "debian": 96,
    "ubuntu": 94,
    "rhel": 80,
    "red hat enterprise linux": 80,
    "suse": 83,
    "sles": 85,
    "centos": 107,
    "oracle linux": 109,
    "freebsd": 78,
}
LINUX_64 = 101
OTHER_64 = 102
# VirtualBox's guest OS type ids (its vbox:Machine OSType); anything else Linux is Linux26_64.
_VBOX_GUEST = {"debian": "Debian_64", "ubuntu": "Ubuntu_64", "almalinux": "RedHat_64", "rhel": "RedHat_64"}
# VirtualBox's <Firmware type=...> values and what they mean here.
_VBOX_FIRMWARE = {"BIOS": "bios", "EFI": "efi", "EFI32": "efi", "EFI64": "efi", "EFIDUAL": "efi"}
# vmw:osType values old enough for ESXi 6.5+ (newer guest ids are rejected by older hosts).
_VMWARE_GUEST = {"debian": "debian10_64Guest", "ubuntu": "ubuntu64Guest", "centos": "centos7_64Guest"}


def os_code(appliance: Appliance) -> int:
    """The CIM OSType for the appliance's OS: the distribution's own code, else Linux 64-bit, else Other 64-bit."""
    code = _OS_CODES_64.get(appliance.os.name.lower())
    if code is not None:
        return code
    return LINUX_64 if appliance.os.family is OsFamily.LINUX else OTHER_64


@dataclass(frozen=True)
class DiskRef:
    """What the descriptor says about the one disk: its member name, file size and virtual size."""

    href: str
    size: int
    capacity: int


def derived_id(*parts: str) -> str:
    """A stable UUID for ``parts``: same appliance and version, same id (no clocks, no randomness)."""
    return str(uuid.uuid5(ID_NAMESPACE, "/".join(parts)))


def _q(ns: str, tag: str) -> str:
    return f"{{{ns}}}{tag}"


def _sub(parent: etree._Element, tag: str, text: str | None = None, ns: str = OVF_NS, **attrs: str) -> etree._Element:
    el = etree.SubElement(parent, _q(ns, tag), {_q(OVF_NS, k): v for k, v in attrs.items()})
    if text is not None:
        el.text = text
    return el


def _item(parent: etree._Element, fields: dict[str, str]) -> None:
    """An ``Item`` whose rasd children come in the CIM schema's (alphabetical) order."""
    item = _sub(parent, "Item")
    for name in sorted(fields):
        _sub(item, name, fields[name], ns=RASD_NS)


def build_descriptor(
    appliance: Appliance, version: str, disk: DiskRef, profile: HardwareProfile = HardwareProfile.PORTABLE
) -> bytes:
    """The OVF 1.x descriptor for ``appliance`` at ``version`` with one disk; deterministic bytes."""
    spec = PROFILES[profile]
    hw = appliance.hardware
    # VirtualBox reads the firmware only from its own machine section, which must then also attach the
    # disk: only a UEFI-only image needs it (BIOS is every importer's default; a hybrid disk boots both)
    vbox = appliance.firmware is Firmware.UEFI and profile is not HardwareProfile.VMWARE
    nsmap = {**NSMAP, "vbox": VBOX_NS} if vbox else NSMAP
    env = etree.Element(_q(OVF_NS, "Envelope"), nsmap=nsmap)  # type: ignore[arg-type]
    env.set("{http://www.w3.org/XML/1998/namespace}lang", "en-US")

    refs = _sub(env, "References")
    _sub(refs, "File", id="file1", href=disk.href, size=str(disk.size))

    disks = _sub(env, "DiskSection")
    _sub(disks, "Info", "Virtual disk information")
    _sub(
        disks,
        "Disk",
        diskId="vmdisk1",
        fileRef="file1",
        capacity=str(disk.capacity),
        capacityAllocationUnits="byte",
        format=STREAM_VMDK_URI,
    )
    if vbox:
        disks[-1].set(_q(VBOX_NS, "uuid"), derived_id(appliance.name, version, "disk"))

    nets = _sub(env, "NetworkSection")
    _sub(nets, "Info", "The list of logical networks")
    net = _sub(nets, "Network", name="VM Network")
    _sub(net, "Description", "The network the appliance's first NIC connects to")

    vs = _sub(env, "VirtualSystem", id=appliance.name)
    _sub(vs, "Info", appliance.title)
    _sub(vs, "Name", appliance.name)

    product = _sub(vs, "ProductSection")
    _sub(product, "Info", "Information about the installed software")
    _sub(product, "Product", appliance.title)
    _sub(product, "Vendor", appliance.vendor)
    _sub(product, "Version", version)
    _sub(product, "FullVersion", f"{appliance.name} {version}")
    _sub(product, "ProductUrl", appliance.homepage)
    _sub(product, "VendorUrl", appliance.homepage)

    notes = _sub(vs, "AnnotationSection")
    _sub(notes, "Info", "A human-readable annotation")
    _sub(notes, "Annotation", appliance.description)

    os_section = _sub(vs, "OperatingSystemSection", id=str(os_code(appliance)), version=appliance.os.version)
    if spec.vmware_os_type:
        guest = _VMWARE_GUEST.get(appliance.os.name.lower(), "other3xLinux64Guest")
        os_section.set(_q(VMW_NS, "osType"), guest)
    _sub(os_section, "Info", "The kind of installed guest operating system")
    _sub(os_section, "Description", f"{appliance.os.name} {appliance.os.version} ({_arch_label(appliance.arch)})")

    vhs = _sub(vs, "VirtualHardwareSection")
    _sub(vhs, "Info", "Virtual hardware requirements")
    system = _sub(vhs, "System")
    for name, value in sorted(
        {
            "ElementName": "Virtual Hardware Family",
            "InstanceID": "0",
            "VirtualSystemIdentifier": derived_id(appliance.name, version),
            "VirtualSystemType": spec.system_type,
        }.items()
    ):
        _sub(system, name, value, ns=VSSD_NS)
    cores, ram = hw.cores_recommended, hw.ram_recommended_mb
    _item(
        vhs,
        {
            "AllocationUnits": "hertz * 10^6",
            "Description": "Number of virtual CPUs",
            "ElementName": f"{cores} virtual CPU(s)",
            "InstanceID": "1",
            "ResourceType": str(int(ResourceType.PROCESSOR)),
            "VirtualQuantity": str(cores),
        },
    )
    _item(
        vhs,
        {
            "AllocationUnits": "byte * 2^20",
            "Description": "Memory size",
            "ElementName": f"{ram} MB of memory",
            "InstanceID": "2",
            "ResourceType": str(int(ResourceType.MEMORY)),
            "VirtualQuantity": str(ram),
        },
    )
    _item(
        vhs,
        {
            "Address": "0",
            "Description": "Disk controller",
            "ElementName": f"{spec.controller_subtype} controller 0",
            "InstanceID": "3",
            "ResourceSubType": spec.controller_subtype,
            "ResourceType": str(int(spec.controller_type)),
        },
    )
    _item(
        vhs,
        {
            "AddressOnParent": "0",
            "Description": "Root disk",
            "ElementName": "disk0",
            "HostResource": "ovf:/disk/vmdisk1",
            "InstanceID": "4",
            "Parent": "3",
            "ResourceType": str(int(ResourceType.DISK)),
        },
    )
    _item(
        vhs,
        {
            "AddressOnParent": "7",
            "AutomaticAllocation": "true",
            "Connection": "VM Network",
            "Description": f"{spec.nic_subtype} ethernet adapter on VM Network",
            "ElementName": "ethernet0",
            "InstanceID": "5",
            "ResourceSubType": spec.nic_subtype,
            "ResourceType": str(int(ResourceType.ETHERNET)),
        },
    )
    if appliance.firmware is Firmware.UEFI:
        # VMware and virt-v2v read the firmware from here; BIOS is every importer's default, and a hybrid
        # disk boots under either, so only a UEFI-only image says anything
        config = _sub(vhs, "Config", ns=VMW_NS)
        config.set(_q(OVF_NS, "required"), "false")
        config.set(_q(VMW_NS, "key"), "firmware")
        config.set(_q(VMW_NS, "value"), "efi")
    if vbox:
        _virtualbox_machine(vs, appliance, version)
    return bytes(etree.tostring(env, xml_declaration=True, encoding="UTF-8", pretty_print=True))


def _virtualbox_machine(vs: etree._Element, appliance: Appliance, version: str) -> None:
    """VirtualBox's own section (``ovf:required="false"``: other importers skip it): the firmware, plus
    what VirtualBox then takes from here instead of the DMTF items (CPUs, memory, the disk on AHCI).
    Its children are unprefixed, in the envelope's namespace, as VirtualBox itself writes them."""
    hw = appliance.hardware
    guest = _VBOX_GUEST.get(
        appliance.os.name.lower(), "Linux26_64" if appliance.os.family is OsFamily.LINUX else "Other_64"
    )
    machine = _sub(vs, "Machine", ns=VBOX_NS, required="false")
    for name, value in (("name", appliance.name), ("uuid", "{" + derived_id(appliance.name, version, "vbox") + "}")):
        machine.set(name, value)
    machine.set("OSType", guest)
    _sub(machine, "Info", "VirtualBox machine configuration: UEFI firmware")
    hardware = _sub(machine, "Hardware")
    etree.SubElement(hardware, _q(OVF_NS, "CPU"), count=str(hw.cores_recommended))
    etree.SubElement(hardware, _q(OVF_NS, "Memory"), RAMSize=str(hw.ram_recommended_mb))
    etree.SubElement(hardware, _q(OVF_NS, "Firmware"), type="EFI")
    controllers = _sub(machine, "StorageControllers")
    sata = etree.SubElement(
        controllers, _q(OVF_NS, "StorageController"), name="SATA", type="AHCI", PortCount="1", Bootable="true"
    )
    attached = etree.SubElement(
        sata, _q(OVF_NS, "AttachedDevice"), type="HardDisk", hotpluggable="false", port="0", device="0"
    )
    etree.SubElement(attached, _q(OVF_NS, "Image"), uuid="{" + derived_id(appliance.name, version, "disk") + "}")


def _arch_label(arch: Arch) -> str:
    return "64-bit x86" if arch is Arch.X86_64 else "64-bit ARM"


class UnsafeXml(ValueError):
    """The descriptor is not plain XML we are willing to parse (DTD, entities, too big, malformed)."""


def parse_descriptor(data: bytes) -> etree._ElementTree:
    """Parse untrusted descriptor bytes: no DTD, no entities, no network, bounded size.

    lxml with ``resolve_entities=False`` never expands entities and ``no_network`` never fetches;
    any DOCTYPE is refused outright, so neither XXE nor entity bombs get a chance.
    """
    if len(data) > MAX_DESCRIPTOR_BYTES:
        raise UnsafeXml(f"descriptor is {len(data)} bytes, more than the {MAX_DESCRIPTOR_BYTES} allowed")
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False, huge_tree=False
    )
    try:
        tree = etree.ElementTree(etree.fromstring(data, parser))
    except etree.XMLSyntaxError as e:
        raise UnsafeXml(f"not well-formed XML: {e}") from e
    if getattr(tree.docinfo, "doctype", "") or tree.docinfo.internalDTD is not None:
        raise UnsafeXml("has a DOCTYPE (DTDs and entities are refused: XXE / entity expansion)")
    for node in tree.iter():
        if isinstance(node, etree._Entity):
            raise UnsafeXml("uses an entity reference")
    return tree


@functools.cache
def _schema() -> etree.XMLSchema:
    parser = etree.XMLParser(no_network=True, resolve_entities=False)
    return etree.XMLSchema(etree.parse(str(SCHEMA_FILE), parser))


def descriptor_firmware(tree: etree._ElementTree) -> str:
    """The firmware a descriptor asks for: ``efi`` or ``bios``, from VMware's ``vmw:Config firmware``
    and VirtualBox's ``vbox:Machine``/``Firmware type`` (either or both; BIOS when neither says, as every
    importer assumes). ``ConfigError`` for a value neither knows, or when the two disagree."""
    said: dict[str, str] = {}
    for el in tree.iter(_q(VMW_NS, "Config")):
        if el.get(_q(VMW_NS, "key")) == "firmware":
            value = el.get(_q(VMW_NS, "value"), "")
            if value not in ("efi", "bios"):
                raise ConfigError(f"vmw:Config firmware: {value[:40]!r} is not efi or bios")
            said["vmw:Config firmware"] = value
    for machine in tree.iter(_q(VBOX_NS, "Machine")):
        for el in machine.iter("{*}Firmware"):
            kind = str(el.get("type", ""))
            if kind not in _VBOX_FIRMWARE:
                raise ConfigError(
                    f"vbox:Machine Firmware type: {kind[:40]!r} is not one of {', '.join(_VBOX_FIRMWARE)}"
                )
            said["vbox:Machine Firmware"] = _VBOX_FIRMWARE[kind]
    if len(set(said.values())) > 1:
        raise ConfigError("firmware: " + " but ".join(f"{k} says {v}" for k, v in sorted(said.items())))
    return next(iter(said.values()), "bios")


def strip_optional_vendor_sections(tree: etree._ElementTree) -> etree._ElementTree:
    """A copy without elements outside the DMTF namespaces marked ``ovf:required="false"``.

    The schema cannot know vendor extensions; the OVF spec lets importers skip exactly these.
    """
    copy = etree.ElementTree(etree.fromstring(etree.tostring(tree)))
    for el in list(copy.iter()):
        if not isinstance(el.tag, str):
            continue
        ns = etree.QName(el).namespace or ""
        if not ns.startswith(DMTF_PREFIX) and el.get(_q(OVF_NS, "required")) == "false":
            parent = el.getparent()
            if parent is not None:
                parent.remove(el)
    return copy


def schema_problems(tree: etree._ElementTree) -> list[str]:
    """Every DMTF OVF 1.1.1 schema violation, ``line N: message``; empty when valid."""
    schema = _schema()
    if schema.validate(strip_optional_vendor_sections(tree)):
        return []
    return [f"line {e.line}: {e.message}" for e in schema.error_log]  # type: ignore[attr-defined]
