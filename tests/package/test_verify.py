"""`verify-ova` against a table of hostile OVAs built here: each is rejected for the right reason,
and the tampering is never hidden behind an unrelated complaint (the manifest is recomputed unless
the manifest itself is the attack)."""

from __future__ import annotations

import struct
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.errors import VerificationError
from pipeline.package.verify import verify_ova

from .helpers import ova_members, with_manifest, write_ova

STEM = "debian-12-2026.11.22"
OVF, MF, CERT, DISK = f"{STEM}.ovf", f"{STEM}.mf", f"{STEM}.cert", f"{STEM}-disk1.vmdk"


@dataclass(frozen=True)
class Parts:
    ovf: bytes
    disk: bytes

    def mf(self, ovf: bytes | None = None, files: list[tuple[str, bytes]] | None = None) -> bytes:
        return with_manifest(OVF, self.ovf if ovf is None else ovf, files or [(DISK, self.disk)])


@pytest.fixture(scope="module")
def parts(ova_path: Path) -> Parts:
    members = ova_members(ova_path)
    return Parts(members[OVF], members[DISK])


def assemble(tmp: Path, ovf: bytes, disk: bytes, *, mf: bytes | None = None, **kw: object) -> Path:
    """A well-formed OVA around a possibly tampered descriptor/disk, manifest recomputed."""
    manifest = mf if mf is not None else with_manifest(OVF, ovf, [(DISK, disk)])
    return write_ova(tmp / "x.ova", [(OVF, ovf), (MF, manifest), (DISK, disk)], **kw)  # type: ignore[arg-type]


def edit_ovf(p: Parts, old: str, new: str) -> bytes:
    assert old.encode() in p.ovf, old
    return p.ovf.replace(old.encode(), new.encode(), 1)


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def patched_disk(p: Parts, offset: int, value: bytes) -> bytes:
    return p.disk[:offset] + value + p.disk[offset + len(value) :]


def flat_extent_disk(p: Parts) -> bytes:
    line = f'RW 131072 SPARSE "{DISK}"'.encode()
    evil = b'RW 131072 FLAT "/etc/hosts" 0'
    assert line in p.disk[:4096]
    return p.disk.replace(line, evil.ljust(len(line)), 1)


def qcow2_with_backing(tmp: Path) -> bytes:
    import subprocess

    path = tmp / "b.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/passwd", "-F", "raw", path], check=True)
    return path.read_bytes()


def two_files(p: Parts, tmp: Path, reverse: bool) -> Path:
    """The descriptor with a second referenced file (an ISO), members in or against References order."""
    iso = b"\0" * 2048
    ovf = edit_ovf(p, "</References>", '  <File ovf:id="file2" ovf:href="extra.iso" ovf:size="2048"/>\n  </References>')
    files = [(DISK, p.disk), ("extra.iso", iso)]
    members = list(reversed(files)) if reverse else files
    return write_ova(tmp / "x.ova", [(OVF, ovf), (MF, p.mf(ovf, files)), *members])


Case = Callable[[Parts, Path], Path]

CASES: list[tuple[str, Case, str]] = [
    ("manifest-first", lambda p, t: write_ova(t / "x.ova", [(MF, p.mf()), (OVF, p.ovf), (DISK, p.disk)]),
     "the first member must be the .ovf"),
    ("manifest-and-cert-split", lambda p, t: write_ova(t / "x.ova", [(OVF, p.ovf), (MF, p.mf()), (DISK, p.disk),
                                                                     (CERT, b"SHA256(x)= 00\n")]),
     "must follow the descriptor or be last"),
    ("files-out-of-references-order", lambda p, t: two_files(p, t, reverse=True), "not in References order"),
    ("pax-headers", lambda p, t: assemble(t, p.ovf, p.disk, fmt=tarfile.PAX_FORMAT), "PAX extended header"),
    ("gnu-long-name", lambda p, t: write_ova(t / "x.ova", [(OVF, p.ovf), (MF, p.mf()), (DISK, p.disk),
                                                           ("a" * 120, b"x")], fmt=tarfile.GNU_FORMAT),
     "GNU long name"),
    ("symlink", lambda p, t: write_ova(t / "x.ova", [(OVF, p.ovf), (MF, p.mf()), (DISK, p.disk)],
                                       special=[special("link", tarfile.SYMTYPE, "/etc/shadow")]),
     "is a link (to '/etc/shadow')"),
    ("hardlink", lambda p, t: write_ova(t / "x.ova", [(OVF, p.ovf), (MF, p.mf()), (DISK, p.disk)],
                                        special=[special("hl", tarfile.LNKTYPE, DISK)]),
     "is a link"),
    ("char-device", lambda p, t: write_ova(t / "x.ova", [(OVF, p.ovf), (MF, p.mf()), (DISK, p.disk)],
                                           special=[special("null", tarfile.CHRTYPE)]),
     "not a regular file"),
    ("directory", lambda p, t: write_ova(t / "x.ova", [(OVF, p.ovf), (MF, p.mf()), (DISK, p.disk)],
                                         special=[special("dir", tarfile.DIRTYPE)]),
     "not a regular file"),
    ("absolute-name", lambda p, t: write_ova(t / "x.ova", [(OVF, p.ovf), (MF, p.mf()), (DISK, p.disk),
                                                           ("/etc/cron.d/x", b"x")]),
     "unsafe member name"),
    ("dot-dot-name", lambda p, t: write_ova(t / "x.ova", [(OVF, p.ovf), (MF, p.mf()), (DISK, p.disk),
                                                          ("../../x", b"x")]),
     "unsafe member name"),
    ("duplicate-disk", lambda p, t: write_ova(t / "x.ova", [(OVF, p.ovf), (MF, p.mf()), (DISK, p.disk),
                                                            (DISK, b"\0" * 512)]),
     "duplicate member"),
    ("unreferenced-member", lambda p, t: write_ova(t / "x.ova", [(OVF, p.ovf), (MF, p.mf()), (DISK, p.disk),
                                                                 ("extra.iso", b"x" * 100)]),
     "extra.iso: member not referenced"),
    ("flipped-disk-byte", lambda p, t: write_ova(t / "x.ova", [(OVF, p.ovf), (MF, p.mf()),
                                                               (DISK, patched_disk(p, len(p.disk) - 700, b"\xff"))]),
     f"{DISK}: SHA256 does not match the manifest"),
    ("tampered-descriptor", lambda p, t: write_ova(t / "x.ova", [(OVF, edit_ovf(p, "2048", "4096")), (MF, p.mf()),
                                                                 (DISK, p.disk)]),
     f"{OVF}: SHA256 does not match the manifest"),
    ("no-manifest", lambda p, t: write_ova(t / "x.ova", [(OVF, p.ovf), (DISK, p.disk)]), f"{MF} is missing"),
    ("sha1-manifest", lambda p, t: assemble(t, p.ovf, p.disk, mf=p.mf().replace(b"SHA256(", b"SHA1(")),
     "unsupported algorithm SHA1"),
    ("spaced-manifest", lambda p, t: assemble(t, p.ovf, p.disk, mf=p.mf().replace(b")= ", b") = ")),
     "not 'ALGO(name)= hex'"),
    ("manifest-extra-entry", lambda p, t: assemble(t, p.ovf, p.disk, mf=p.mf() + b"SHA256(other.vmdk)= " +
                                                   b"0" * 64 + b"\n"),
     "lists other.vmdk"),
    ("manifest-missing-disk", lambda p, t: assemble(t, p.ovf, p.disk, mf=with_manifest(OVF, p.ovf, [])
                                                    .replace(f"SHA256({DISK})".encode(), b"")),
     f"has no digest for {DISK}"),
    ("xxe-doctype", lambda p, t: assemble(t, p.ovf.replace(b"<Envelope", b'<!DOCTYPE Envelope [<!ENTITY x SYSTEM '
                                                           b'"file:///etc/passwd">]>\n<Envelope', 1), p.disk),
     "DOCTYPE"),
    ("entity-bomb", lambda p, t: assemble(t, p.ovf.replace(b"<Envelope", b'<!DOCTYPE E [<!ENTITY a "aaaaaaaa">'
                                                           b'<!ENTITY b "&a;&a;&a;&a;&a;&a;">]>\n<Envelope', 1)
                                          .replace(b"<Info>Virtual disk information", b"<Info>&b;", 1), p.disk),
     "DOCTYPE"),
    ("schema-invalid-rasd-order", lambda p, t: assemble(t, edit_ovf(
        p, "<rasd:ElementName>disk0</rasd:ElementName>\n", "").replace(
        b"<rasd:ResourceType>17</rasd:ResourceType>",
        b"<rasd:ResourceType>17</rasd:ResourceType>\n<rasd:ElementName>disk0</rasd:ElementName>"), p.disk),
     "schema: line"),
    ("ovf-2.0-namespace", lambda p, t: assemble(t, p.ovf.replace(b"ovf/envelope/1", b"ovf/envelope/2"), p.disk),
     "not an OVF 1.x envelope"),
    ("wrong-file-size", lambda p, t: assemble(t, edit_ovf(p, f'ovf:size="{len(p.disk)}"',
                                                          f'ovf:size="{len(p.disk) + 512}"'), p.disk),
     "ovf:size says"),
    ("wrong-capacity", lambda p, t: assemble(t, edit_ovf(p, 'ovf:capacity="67108864"', 'ovf:capacity="1073741824"'),
                                             p.disk),
     "differs from the image's virtual size 67108864"),
    ("dangling-host-resource", lambda p, t: assemble(t, edit_ovf(p, "ovf:/disk/vmdisk1", "ovf:/disk/nope"), p.disk),
     "names no Disk in DiskSection"),
    ("memory-units", lambda p, t: assemble(t, edit_ovf(p, ">byte * 2^20<", ">KiloBytes<"), p.disk),
     "memory AllocationUnits 'KiloBytes'"),
    ("duplicate-instance-id", lambda p, t: assemble(t, edit_ovf(p, "<rasd:InstanceID>5</rasd:InstanceID>",
                                                                "<rasd:InstanceID>4</rasd:InstanceID>"), p.disk),
     "Item 4: duplicate InstanceID"),
    ("two-descriptors", lambda p, t: write_ova(t / "x.ova", [(OVF, p.ovf), (MF, p.mf()), (DISK, p.disk),
                                                             ("second.ovf", p.ovf)]),
     "more than one descriptor (second.ovf)"),
    ("gzipped-ova", lambda p, t: (lambda path: path.write_bytes(__import__("gzip").compress(path.read_bytes(), 1))
                                  and path)(assemble(t, p.ovf, p.disk)),
     "tar: invalid header at byte 0"),
    ("parent-not-a-controller", lambda p, t: assemble(t, edit_ovf(p, "<rasd:Parent>3</rasd:Parent>",
                                                                  "<rasd:Parent>1</rasd:Parent>"), p.disk),
     "is not a disk controller Item"),
    ("compressed-file", lambda p, t: assemble(t, edit_ovf(p, 'ovf:id="file1"', 'ovf:id="file1" ovf:compression="gzip"'),
                                              p.disk),
     "compressed or chunked files are not supported"),
    ("unsupported-disk-format", lambda p, t: assemble(t, edit_ovf(p, "vmdk.html#streamOptimized", "vmdk.html#"),
                                                      p.disk),
     "unsupported disk format"),
    ("qcow2-with-backing-as-vmdk", lambda p, t: (lambda d: assemble(t, edit_ovf(
        p, f'ovf:size="{len(p.disk)}"', f'ovf:size="{len(d)}"'), d))(qcow2_with_backing(t)),
     "declared vmdk but has qcow2"),
    ("vmdk-flat-extent", lambda p, t: assemble(t, p.ovf, flat_extent_disk(p)), "FLAT extent"),
    ("vmdk-version-1", lambda p, t: assemble(t, p.ovf, patched_disk(p, 4, struct.pack("<I", 1))),
     "header version 1, consumers need 3"),
    ("trailing-payload", lambda p, t: (lambda path: path.write_bytes(path.read_bytes() + b"MZ" * 100) and path)(
        assemble(t, p.ovf, p.disk)),
     "after the end-of-archive marker"),
    ("truncated", lambda p, t: (lambda path: path.write_bytes(path.read_bytes()[: 3 * 512 + 2048]) and path)(
        assemble(t, p.ovf, p.disk)),
     "truncated"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "reason"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_ova_is_rejected_for_the_right_reason(parts: Parts, tmp_path: Path, case: Case, reason: str) -> None:
    path = case(parts, tmp_path)
    with pytest.raises(VerificationError) as caught:
        verify_ova(path, qemu_check=False)
    problems = caught.value.problems
    assert any(reason in p for p in problems), problems
    assert caught.value.subject == str(path)


def test_the_untampered_rebuild_passes(parts: Parts, tmp_path: Path) -> None:
    """Control for the table: the same assembly without tampering is sound, so each case fails by its edit."""
    report = verify_ova(assemble(tmp_path, parts.ovf, parts.disk))
    assert report.disks and report.disks[0].href == DISK


def test_other_legal_layouts_pass(parts: Parts, tmp_path: Path) -> None:
    """DSP0243 also allows the manifest at the end, and several files in References order."""
    (tmp_path / "end").mkdir()
    at_end = write_ova(tmp_path / "end" / "x.ova", [(OVF, parts.ovf), (DISK, parts.disk), (MF, parts.mf())])
    assert verify_ova(at_end, qemu_check=False).manifest_algorithms == ("SHA256",)
    assert verify_ova(two_files(parts, tmp_path, reverse=False), qemu_check=False)


def test_bad_certificate_is_rejected(parts: Parts, tmp_path: Path) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(datetime.datetime(2026, 1, 1))
        .not_valid_after(datetime.datetime(2027, 1, 1)).sign(key, hashes.SHA256())
    )  # fmt: skip
    mf = parts.mf()
    other = key.sign(mf + b"x", padding.PKCS1v15(), hashes.SHA256())
    cert_member = f"SHA256({MF})= {other.hex()}\n".encode() + cert.public_bytes(serialization.Encoding.PEM)
    path = write_ova(tmp_path / "x.ova", [(OVF, parts.ovf), (MF, mf), (CERT, cert_member), (DISK, parts.disk)])
    with pytest.raises(VerificationError) as caught:
        verify_ova(path, qemu_check=False)
    assert any("signature does not match" in p for p in caught.value.problems), caught.value.problems


def test_every_problem_is_reported_not_just_the_first(parts: Parts, tmp_path: Path) -> None:
    ovf = edit_ovf(parts, "ovf:/disk/vmdisk1", "ovf:/disk/nope")
    bad_disk = patched_disk(parts, len(parts.disk) - 700, b"\xff")
    path = write_ova(tmp_path / "x.ova", [(OVF, ovf), (MF, parts.mf(ovf)), (DISK, bad_disk), ("junk", b"j")])
    with pytest.raises(VerificationError) as caught:
        verify_ova(path, qemu_check=False)
    text = "\n".join(caught.value.problems)
    for reason in ("names no Disk", "junk: member not referenced", f"{DISK}: SHA256 does not match"):
        assert reason in text


def test_a_grain_table_entry_past_the_end_is_refused(parts: Parts, tmp_path: Path) -> None:
    """A grain table entry pointing far past the stream passes the header checks; the grain walk
    (every table entry matched against the grains actually read) refuses it, without qemu-img."""
    good = verify_ova(assemble(tmp_path, parts.ovf, parts.disk), qemu_check=True)
    assert good.disks
    disk = bytearray(parts.disk)
    gd = struct.unpack_from("<Q", disk, 56)[0]
    if gd == 0xFFFFFFFFFFFFFFFF:  # GD_AT_END: the footer, second-to-last sector, holds the offset
        gd = struct.unpack_from("<Q", disk, len(disk) - 1024 + 56)[0]
    gd *= 512
    gt = struct.unpack_from("<I", disk, gd)[0] * 512  # the first grain table
    entry = next(gt + 4 * i for i in range(512) if struct.unpack_from("<I", disk, gt + 4 * i)[0])
    struct.pack_into("<I", disk, entry, 0x7FFFFFF0)  # an allocated grain now points far past the end
    path = assemble(tmp_path, parts.ovf, bytes(disk))
    with pytest.raises(VerificationError) as caught:
        verify_ova(path, qemu_check=False)
    assert caught.value.problems == [
        f"{DISK}: vmdk: grain table 0 entry 16 says sector 2147483632, the grain for LBA 2048 is at sector 128"
    ]


def test_another_tools_ova_is_accepted(samples_dir: Path, tmp_path: Path) -> None:
    """An ovftool-exported descriptor (COT's vmware.ovf), its 1 GiB disk made by qemu-img, packed by GNU tar
    in USTAR format with a hand-written manifest: verify-ova has no complaint."""
    raw = tmp_path / "src.raw"
    with open(raw, "wb") as f:
        f.truncate(1024**3)
        f.write(b"boot" * 1000)
    vmdk = tmp_path / "input.vmdk"
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", raw, vmdk], check=True
    )
    ovf = (
        (samples_dir / "cot_vmware.ovf")
        .read_bytes()
        .replace(b'ovf:size="152576"', f'ovf:size="{vmdk.stat().st_size}"'.encode())
    )
    (tmp_path / "vmware.ovf").write_bytes(ovf)
    (tmp_path / "vmware.mf").write_bytes(with_manifest("vmware.ovf", ovf, [("input.vmdk", vmdk.read_bytes())]))
    subprocess.run(
        ["tar", "--format=ustar", "--owner=0", "--group=0", "-cf", "vmware.ova", "vmware.ovf", "vmware.mf",
         "input.vmdk"],
        cwd=tmp_path, check=True,
    )  # fmt: skip
    report = verify_ova(tmp_path / "vmware.ova")
    assert [(d.href, d.capacity) for d in report.disks] == [("input.vmdk", 1024**3)]
