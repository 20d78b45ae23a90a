"""``invoke verify-ova``: a strict check of any OVA, ours or another tool's.

Nothing is extracted: tar headers are decoded one by one (``formats.ova.parse_tar_header``) and members
are read in place as bounded streams. Every problem found is reported, one line each; only a sound
OVA returns a report. Attack classes covered: security-and-reliability.md §2.2-2.4; disk headers §2.1.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

from lxml import etree

from pipeline.errors import ConfigError, VerificationError
from pipeline.formats.ova import (
    BLOCK,
    SAFE_NAME,
    TarHeaderError,
    certificate_problems,
    parse_manifest,
    parse_tar_header,
)
from pipeline.formats.ovf import (
    CONTROLLER_TYPES,
    MAX_DESCRIPTOR_BYTES,
    OVF_NS,
    RASD_NS,
    STREAM_VMDK_URI,
    ResourceType,
    UnsafeXml,
    descriptor_firmware,
    parse_descriptor,
    schema_problems,
)
from pipeline.formats.vmdk_read import check_extent
from pipeline.fsutil import CHUNK
from pipeline.package.formats import qemu_img
from pipeline.package.images import DiskFormat, DiskInspection, inspect_disk
from pipeline.run import Limits, run

MAX_MEMBERS = 100  # EGI cloudkeeper's bound; a real OVA has three or four
MAX_SCHEMA_LINES = 10
INFLATE_WORKERS = 2  # grains are independent zlib streams; CPython's zlib releases the GIL
ZERO_BLOCK = bytes(BLOCK)
USTAR_MAGICS = (b"ustar\x0000", b"ustar  \x00")  # POSIX USTAR; GNU tar's spelling of the same header
QEMU_CHECK_LIMITS = Limits(cpu_seconds=60, address_space_bytes=1024**3)

# Disk format URIs we can check, with the VMDK createType each one implies.
DISK_FORMATS: dict[str, tuple[DiskFormat, str]] = {
    STREAM_VMDK_URI: (DiskFormat.VMDK, "streamOptimized"),
    "http://www.vmware.com/interfaces/specifications/vmdk.html#sparse": (DiskFormat.VMDK, "monolithicSparse"),
}
# Capacity units (DSP0004 programmatic units): "byte" or "byte * 2^N" / "byte * 10^N", ASCII digits only.
_UNITS = re.compile(r"byte(?:[ ]*\*[ ]*(2|10)[ ]*\^[ ]*([0-9]{1,2}))?", re.ASCII)
_MAX_EXPONENT = {"2": 60, "10": 18}
_DECIMAL = re.compile(r"[0-9]{1,20}", re.ASCII)  # what xs:unsignedLong allows, no '²' or other digits
DEFAULT_MAX_CAPACITY_GIB = 16 * 1024  # 16 TiB: VMware's own limit for a VMDK is 62 TiB, a real image is GiBs
MAX_PROBLEMS = 100
MEMORY_UNITS = {"MegaBytes", "MB", "byte * 2^20", "GigaBytes", "GB", "byte * 2^30"}


@dataclass(frozen=True)
class TarMember:
    name: str
    offset: int  # where the data starts
    size: int


@dataclass(frozen=True)
class DiskFacts:
    disk_id: str
    href: str
    format: DiskFormat
    subformat: str
    capacity: int | None
    too_big: bool = False


@dataclass(frozen=True)
class DescriptorFacts:
    """What the checks after the descriptor need: files by href, disks, and the disks' problems."""

    files: dict[str, int | None]  # href -> declared size
    disks: list[DiskFacts]
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class OvaReport:
    path: Path
    members: tuple[TarMember, ...]
    disks: tuple[DiskFacts, ...]
    manifest_algorithms: tuple[str, ...]
    signed: bool
    referenced: tuple[str, ...] = ()  # hrefs of the descriptor's References

    def summary(self) -> str:
        disks = ", ".join(f"{d.href} ({d.subformat} {d.format.value}, {d.capacity} bytes)" for d in self.disks)
        algos = "/".join(self.manifest_algorithms)
        signed = "signed" if self.signed else "unsigned"
        return (
            f"{self.path}: sound OVA: {len(self.members)} members, manifest {algos} verified, "
            f"{signed}; disks: {disks or 'none'}"
        )


def verify_ova(
    path: Path,
    qemu_check: bool = True,
    *,
    max_capacity_gib: int = DEFAULT_MAX_CAPACITY_GIB,
    max_members: int = MAX_MEMBERS,
) -> OvaReport:
    """Check ``path`` strictly; ``VerificationError`` lists every problem, one per line.

    The time and memory it takes are bounded by the OVA's size: headers and the descriptor are
    capped, each disk file is checked once (every grain inflated, one grain's output at a time per
    worker), and the digests are computed while the grains are inflated.
    """
    problems: list[str] = []
    max_capacity = max_capacity_gib * 2**30
    try:
        f = open(path, "rb")
    except OSError as e:
        raise VerificationError(str(path), [f"cannot open: {e.strerror}"]) from e
    with f, ThreadPoolExecutor(max_workers=INFLATE_WORKERS, thread_name_prefix="inflate") as pool:
        members, complete = read_archive(f, problems, max_members)
        if not complete:  # the archive cannot be read past this point: the rest would only be noise
            raise VerificationError(str(path), problems)
        report, walk_targets = _check_contents(path, f, members, problems, max_capacity)
        walker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grains")
        with walker:
            walks = walker.submit(_walk_disks, path, walk_targets, max_capacity, pool)
            report = _check_signature(f, members, report, problems)
            walk_problems = walks.result()
        problems.extend(walk_problems)
    if problems:
        raise VerificationError(str(path), _capped(problems))
    if qemu_check:
        for member, fmt in walk_targets:
            problems.extend(qemu_img_check(path, member, fmt))
    if problems:
        raise VerificationError(str(path), _capped(problems))
    return report


def _capped(problems: list[str]) -> list[str]:
    if len(problems) <= MAX_PROBLEMS:
        return problems
    return [*problems[:MAX_PROBLEMS], f"... and {len(problems) - MAX_PROBLEMS} more problems"]


def _walk_disks(
    path: Path, targets: list[tuple[TarMember, DiskFormat]], max_capacity: int, pool: ThreadPoolExecutor
) -> list[str]:
    """Every grain of every disk file, once each (the authority on whether a disk can be read)."""
    problems: list[str] = []
    with open(path, "rb") as f:
        for member, _fmt in targets:
            extent = check_extent(f, member.offset, member.size, max_capacity=max_capacity, pool=pool,
                                  workers=INFLATE_WORKERS)  # fmt: skip
            problems.extend(f"{member.name}: vmdk: {p}" for p in extent.problems)
    return problems


def read_members(f: BinaryIO, problems: list[str], max_members: int = MAX_MEMBERS) -> list[TarMember]:
    """Decode every tar header; anything but a flat USTAR regular file is a problem."""
    return read_archive(f, problems, max_members)[0]


def read_archive(f: BinaryIO, problems: list[str], max_members: int = MAX_MEMBERS) -> tuple[list[TarMember], bool]:
    """The members, and whether the walk reached the end-of-archive marker (False: a fatal problem).

    Every header is decoded here, field by field (never ``tarfile``): a size that is negative, not
    octal, or beyond the archive ends the walk, so each header moves strictly forward and the walk
    is bounded by the file's size and by ``max_members`` entries.
    """
    members: list[TarMember] = []
    size = f.seek(0, 2)
    offset = 0
    for _ in range(max_members + 1):
        f.seek(offset)
        block = f.read(BLOCK)
        if len(block) < BLOCK:
            problems.append(f"tar: truncated header at byte {offset}" if block else "tar: no end-of-archive marker")
            return members, False
        if block == ZERO_BLOCK:
            _check_trailer(f, offset, size, problems)
            return members, True
        try:
            header = parse_tar_header(block)
        except TarHeaderError as e:
            problems.append(f"tar: invalid header at byte {offset}: {e}")
            return members, False
        name = header.name
        end = offset + BLOCK + header.size + (-header.size % BLOCK)
        if end > size:
            problems.append(
                f"tar: {name!r}: truncated (its {header.size} bytes run past the archive's end at byte {size})"
            )
            return members, False
        if header.magic not in USTAR_MAGICS:
            problems.append(f"tar: {name}: not a USTAR header (magic {header.magic!r})")
        if header.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE):
            problems.append(f"tar: {name}: PAX extended header (importers then miss the descriptor)")
        elif header.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            problems.append(f"tar: {name}: GNU long name/link header")
        elif header.type in (tarfile.SYMTYPE, tarfile.LNKTYPE):
            problems.append(f"tar: {name}: is a link (to {header.linkname!r}); only regular files are allowed")
        elif header.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            problems.append(f"tar: {name}: is not a regular file (type {header.type!r})")
        elif not SAFE_NAME.match(name) or name in (".", ".."):
            problems.append(f"tar: {name!r}: unsafe member name (absolute, '..', a folder or odd characters)")
        elif any(m.name == name for m in members):
            problems.append(f"tar: {name}: duplicate member")
        else:
            members.append(TarMember(name, offset + BLOCK, header.size))
        offset = end
    problems.append(f"tar: more than {max_members} entries (raise --max-members if this OVA is genuine)")
    return members, False


def _check_trailer(f: BinaryIO, offset: int, size: int, problems: list[str]) -> None:
    """After the end-of-archive marker only zero padding may follow (no hidden payload)."""
    rest = size - offset
    if rest > 64 * 1024:
        problems.append(f"tar: {rest} bytes after the end-of-archive marker")
        return
    f.seek(offset)
    if f.read(rest).strip(b"\0"):
        problems.append("tar: data after the end-of-archive marker")


def _check_contents(
    path: Path, f: BinaryIO, members: list[TarMember], problems: list[str], max_capacity: int
) -> tuple[OvaReport, list[tuple[TarMember, DiskFormat]]]:
    """Everything but the signature; also which disk files deserve the (costly) grain walk."""
    names = [m.name for m in members]
    by_name = {m.name: m for m in members}
    if not names or not names[0].endswith(".ovf"):
        problems.append(f"order: the first member must be the .ovf descriptor (found {names[:1] or 'none'})")
        return OvaReport(path, tuple(members), (), (), False), []
    ovf = members[0]
    extra_ovf = [n for n in names[1:] if n.endswith(".ovf")]
    if extra_ovf:
        problems.append(f"order: more than one descriptor ({', '.join(extra_ovf)})")
    facts = _descriptor(f, ovf, problems, max_capacity)
    mf_name, cert_name = ovf.name[:-4] + ".mf", ovf.name[:-4] + ".cert"
    _check_order(names, mf_name, cert_name, facts, problems)
    for name in names[1:]:
        if name not in (mf_name, cert_name) and name not in facts.files and not name.endswith(".ovf"):
            problems.append(f"{name}: member not referenced by the descriptor")
    for href, declared in facts.files.items():
        member = by_name.get(href)
        if member is None:
            problems.append(f"{href}: referenced by the descriptor but not in the OVA")
        elif declared is not None and declared != member.size:
            problems.append(f"{href}: ovf:size says {declared} bytes, the member has {member.size}")
    disks, targets = _check_disks(f, facts, by_name, problems)
    if mf_name not in by_name:
        problems.append(f"manifest: {mf_name} is missing (an unverifiable OVA is refused)")
    report = OvaReport(path, tuple(members), tuple(disks), (), cert_name in by_name, tuple(facts.files))
    return report, targets


def _check_signature(f: BinaryIO, members: list[TarMember], report: OvaReport, problems: list[str]) -> OvaReport:
    """The manifest's digests (read while the grains are inflated) and the certificate's signature."""
    by_name = {m.name: m for m in members}
    if not members or not members[0].name.endswith(".ovf"):
        return report
    ovf = members[0]
    mf_name, cert_name = ovf.name[:-4] + ".mf", ovf.name[:-4] + ".cert"
    if mf_name not in by_name:
        return report
    algorithms = _check_manifest(f, by_name, ovf.name, mf_name, report.referenced, problems)
    if report.signed:
        cert_data = _read_small(f, by_name[cert_name], 1024 * 1024, problems)
        mf_data = _read_small(f, by_name[mf_name], 1024 * 1024, problems)
        if cert_data is not None and mf_data is not None:
            problems.extend(certificate_problems(cert_data, mf_data, mf_name))
    return replace(report, manifest_algorithms=algorithms)


def _check_order(names: list[str], mf: str, cert: str, facts: DescriptorFacts, problems: list[str]) -> None:
    """DSP0243: .ovf, then .mf and .cert right after it or both at the end, files in References order."""
    meta = [n for n in (mf, cert) if n in names]
    files = [n for n in names[1:] if n not in meta]
    if names[1 : 1 + len(meta)] != meta and names[len(names) - len(meta) :] != meta:
        problems.append(f"order: {' and '.join(meta)} must follow the descriptor or be last, in that order")
    referenced = [h for h in facts.files if h in files]
    if [n for n in files if n in facts.files] != referenced:
        problems.append(f"order: files are not in References order ({', '.join(referenced)})")


def _read_small(f: BinaryIO, member: TarMember, limit: int, problems: list[str]) -> bytes | None:
    if member.size > limit:
        problems.append(f"{member.name}: {member.size} bytes is too big (at most {limit})")
        return None
    f.seek(member.offset)
    return f.read(member.size)


def _descriptor(f: BinaryIO, ovf: TarMember, problems: list[str], max_capacity: int) -> DescriptorFacts:
    data = _read_small(f, ovf, MAX_DESCRIPTOR_BYTES, problems)
    if data is None:
        return DescriptorFacts({}, [])
    try:
        tree = parse_descriptor(data)
    except UnsafeXml as e:
        problems.append(f"{ovf.name}: {e}")
        return DescriptorFacts({}, [])
    facts = descriptor_facts(tree, max_capacity)
    problems.extend(f"{ovf.name}: {p}" for p in facts.problems)
    return facts


def descriptor_facts(tree: etree._ElementTree, max_capacity: int = DEFAULT_MAX_CAPACITY_GIB * 2**30) -> DescriptorFacts:
    """Files, disks and every problem of a parsed descriptor (schema and cross-references)."""
    root = tree.getroot()
    if root.tag != f"{{{OVF_NS}}}Envelope":
        return DescriptorFacts({}, [], [f"not an OVF 1.x envelope (root element {root.tag})"])
    problems: list[str] = []
    schema = schema_problems(tree)
    problems.extend(f"schema: {p}" for p in schema[:MAX_SCHEMA_LINES])
    if len(schema) > MAX_SCHEMA_LINES:
        problems.append(f"schema: ... and {len(schema) - MAX_SCHEMA_LINES} more")
    ns = {"ovf": OVF_NS, "rasd": RASD_NS}

    def attr(el: etree._Element, name: str) -> str | None:
        value = el.get(f"{{{OVF_NS}}}{name}")
        return None if value is None else str(value)

    files: dict[str, int | None] = {}
    file_ids: dict[str, str] = {}
    for el in tree.iterfind("ovf:References/ovf:File", ns):
        fid, href, size = attr(el, "id") or "", attr(el, "href") or "", attr(el, "size")
        if not SAFE_NAME.match(href):
            problems.append(f"File {fid}: href {href!r} is not a plain file name in the OVA")
            continue
        if href in files or fid in file_ids:
            problems.append(f"File {fid}: duplicate id or href {href!r}")
        if attr(el, "compression") or attr(el, "chunkSize"):
            problems.append(f"File {href}: compressed or chunked files are not supported")
        declared = _decimal(size)
        if size is not None and declared is None:
            problems.append(f"File {fid}: ovf:size {size[:40]!r} is not a number of bytes")
        files[href] = declared
        file_ids[fid] = href
    disks: list[DiskFacts] = []
    for el in tree.iterfind("ovf:DiskSection/ovf:Disk", ns):
        disk_id, ref, fmt_uri = attr(el, "diskId") or "", attr(el, "fileRef"), attr(el, "format") or ""
        capacity, reason = _capacity(attr(el, "capacity"), attr(el, "capacityAllocationUnits") or "byte")
        if reason:
            problems.append(f"Disk {disk_id[:40]}: {reason}")
        too_big = capacity is not None and capacity > max_capacity
        if too_big:
            problems.append(
                f"Disk {disk_id[:40]}: capacity {capacity} bytes is more than the {max_capacity // 2**30} GiB "
                "allowed (raise it with --max-capacity-gib)"
            )
        if ref is None:
            continue  # a blank disk to be created by the importer
        if ref not in file_ids:
            problems.append(f"Disk {disk_id}: fileRef {ref!r} names no File in References")
            continue
        known = DISK_FORMATS.get(fmt_uri)
        if known is None:
            problems.append(f"Disk {disk_id}: unsupported disk format {fmt_uri!r}")
            continue
        disks.append(DiskFacts(disk_id, file_ids[ref], known[0], known[1], capacity, too_big))
    disk_ids = {attr(el, "diskId") or "" for el in tree.iterfind("ovf:DiskSection/ovf:Disk", ns)}
    problems.extend(_hardware_problems(tree, disk_ids, ns))
    try:  # VMware's and VirtualBox's ways of asking for UEFI are both accepted; nonsense or a conflict is not
        descriptor_firmware(tree)
    except ConfigError as e:
        problems.extend(e.problems)
    return DescriptorFacts(files, disks, problems)


def _decimal(text: str | None) -> int | None:
    """A plain decimal number (ASCII digits, at most 20 of them), else None."""
    return int(text) if text is not None and _DECIMAL.fullmatch(text) else None


def _capacity(value: str | None, units: str) -> tuple[int | None, str]:
    """Bytes from ``ovf:capacity`` and its units, or None and the reason (strict grammar, small exponents)."""
    count = _decimal(value)
    if count is None:
        return None, f"capacity {(value or '')[:40]!r} is not a number"
    match = _UNITS.fullmatch(units.strip(" "))
    if match is None:
        return None, f"capacityAllocationUnits {units[:40]!r} is not 'byte' or 'byte * 2^N'"
    base, exponent = match.groups()
    if base is None:
        return count, ""
    if int(exponent) > _MAX_EXPONENT[base]:
        return None, f"capacityAllocationUnits {units[:40]!r}: exponent above {_MAX_EXPONENT[base]}"
    return count * int(base) ** int(exponent), ""


def _hardware_problems(tree: etree._ElementTree, disk_ids: set[str], ns: dict[str, str]) -> list[str]:
    problems: list[str] = []
    for section in tree.iterfind(".//ovf:VirtualHardwareSection", ns):
        items = section.findall("ovf:Item", ns)
        by_id: dict[str, int | None] = {}
        seen: set[tuple[str, str]] = set()
        for item in items:
            iid = item.findtext("rasd:InstanceID", "", ns)
            rtype = item.findtext("rasd:ResourceType", "", ns)
            # Items for other deployment options (ovf:configuration) may override the default's id.
            key = (iid, str(item.get(f"{{{OVF_NS}}}configuration", "")))
            if key in seen:
                problems.append(f"Item {iid}: duplicate InstanceID")
            seen.add(key)
            by_id[iid] = _decimal(rtype)
        for item in items:
            iid = item.findtext("rasd:InstanceID", "", ns)
            kind = by_id.get(iid)
            if kind == ResourceType.MEMORY:
                units = item.findtext("rasd:AllocationUnits", "byte * 2^20", ns)
                if units not in MEMORY_UNITS:
                    problems.append(f"Item {iid}: memory AllocationUnits {units!r} (importers want 'byte * 2^20')")
            if kind != ResourceType.DISK:
                continue
            host = item.findtext("rasd:HostResource", "", ns)
            match = re.match(r"^(?:ovf:)?/+disk/(.+)$", host)
            if match is None or match.group(1) not in disk_ids:
                problems.append(f"Item {iid}: HostResource {host!r} names no Disk in DiskSection")
            parent = item.findtext("rasd:Parent", None, ns)
            if parent is not None and by_id.get(parent) not in CONTROLLER_TYPES:
                problems.append(f"Item {iid}: Parent {parent!r} is not a disk controller Item")
    return problems


def _check_disks(
    f: BinaryIO, facts: DescriptorFacts, by_name: dict[str, TarMember], problems: list[str]
) -> tuple[list[DiskFacts], list[tuple[TarMember, DiskFormat]]]:
    """Each disk file's header is inspected once, however many Disk entries name it; the files whose
    headers pass (and whose every Disk is within the capacity cap) are walked grain by grain later."""
    checked: list[DiskFacts] = []
    inspections: dict[str, DiskInspection] = {}
    refused: set[str] = set()
    for disk in facts.disks:
        member = by_name.get(disk.href)
        if member is None:
            continue
        inspection = inspections.get(disk.href)
        if inspection is None:
            f.seek(member.offset)
            inspection = inspect_disk(_Slice(f, member.size), disk.format, member.size)
            inspections[disk.href] = inspection
            problems.extend(f"{disk.href}: {p}" for p in inspection.problems)
        if disk.too_big or not inspection.safe:
            refused.add(disk.href)
        if inspection.subformat and inspection.subformat != disk.subformat:
            problems.append(f"{disk.href}: descriptor says {disk.subformat}, the header says {inspection.subformat}")
            refused.add(disk.href)
        if (
            disk.capacity is not None
            and inspection.virtual_size is not None
            and disk.capacity != inspection.virtual_size
        ):
            problems.append(
                f"{disk.href}: Disk {disk.disk_id[:40]} capacity {disk.capacity} differs from the image's "
                f"virtual size {inspection.virtual_size}"
            )
        checked.append(disk)
    targets = [
        (by_name[href], next(d.format for d in facts.disks if d.href == href))
        for href in inspections
        if href not in refused
    ]
    return checked, targets


class _Slice:
    """A read-only view of ``size`` bytes from the file's current position (a member, in place)."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._f, self._left = f, size

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        data = self._f.read(n)
        self._left -= len(data)
        return data


def _check_manifest(
    f: BinaryIO,
    by_name: dict[str, TarMember],
    ovf_name: str,
    mf_name: str,
    referenced: tuple[str, ...],
    problems: list[str],
) -> tuple[str, ...]:
    data = _read_small(f, by_name[mf_name], 64 * 1024, problems)
    if data is None:
        return ()
    entries, line_problems = parse_manifest(data)
    problems.extend(f"{mf_name}: {p}" for p in line_problems)
    covered = [ovf_name, *referenced]
    for name in entries:
        if name not in covered:
            problems.append(f"{mf_name}: lists {name}, which is neither the descriptor nor a referenced file")
    for name in covered:
        if name not in entries:
            if not line_problems:
                problems.append(f"{mf_name}: has no digest for {name}")
            continue
        member = by_name.get(name)
        if member is None:
            continue
        algo, expected = entries[name]
        actual = _digest(f, member, algo)
        if actual != expected:
            problems.append(f"{name}: {algo} does not match the manifest (manifest {expected}, actual {actual})")
    return tuple(sorted({algo for algo, _ in entries.values()}))


def _digest(f: BinaryIO, member: TarMember, algo: str) -> str:
    h = hashlib.new(algo.lower())
    f.seek(member.offset)
    left = member.size
    while left:
        chunk = f.read(min(CHUNK, left))
        if not chunk:
            break
        h.update(chunk)
        left -= len(chunk)
    return h.hexdigest()


def qemu_img_check(path: Path, member: TarMember, fmt: DiskFormat) -> list[str]:
    """``qemu-img check`` on the disk in place (offset/size into the OVA), explicit driver, limited."""
    filename = str(path.resolve()).replace(",", ",,")
    opts = (
        f"driver={fmt.value},file.driver=raw,file.offset={member.offset},file.size={member.size},"
        f"file.file.driver=file,file.file.filename={filename}"
    )
    result = run([qemu_img(), "check", "--image-opts", opts], check=False, limits=QEMU_CHECK_LIMITS, timeout=120)
    if result.returncode == 0:
        return []
    detail = (result.stderr or result.stdout).strip().splitlines()
    return [f"{member.name}: qemu-img check failed (exit {result.returncode}): {detail[-1] if detail else ''}"]
