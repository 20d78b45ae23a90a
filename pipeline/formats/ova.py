"""The OVA container: a USTAR tar (no PAX) with the descriptor first, then the manifest (and
certificate), then the disks in References order (DSP0243; builders-and-ovf.md §2.5-2.6).

Headers come from ``tarfile.TarInfo.tobuf(USTAR_FORMAT)`` (the standard library's encoder, strict
about field overflows) with fixed owner, mode and mtime, so the same inputs give the same bytes.
Pure: members arrive as bytes, an open binary stream or an iterator of chunks, and the archive goes
to the writer given; opening files is the package stage's business.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from pipeline.errors import ArtifactError

BLOCK = 512
RECORD = 20 * BLOCK  # what tar itself pads archives to
CHUNK = 4 * 1024 * 1024  # bytes read from a member's stream at a time
MEMBER_MODE = 0o644
USTAR_MAX_MEMBER = 8**11 - 1  # the 11-digit octal size field: just under 8 GiB
MANIFEST_ALGORITHM = "SHA256"
MANIFEST_LINE = re.compile(r"^(?P<algo>[A-Z0-9]+)\((?P<name>[^()\n]+)\)= (?P<hex>[0-9a-f]+)$")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")


class Writer(Protocol):
    def write(self, data: bytes) -> int: ...


@runtime_checkable
class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class Member:
    """One file of the OVA: small ones carry their bytes, disks come from a stream or chunks."""

    name: str
    size: int
    content: bytes | Readable | Iterable[bytes]

    @classmethod
    def from_bytes(cls, name: str, data: bytes) -> Member:
        return cls(name, len(data), data)


def tar_header(name: str, size: int, mtime: int) -> bytes:
    """A 512-byte USTAR header: regular file, root-owned, mode 0644, the given mtime."""
    if not SAFE_NAME.match(name):
        raise ArtifactError(f"{name!r}: not a safe OVA member name ([A-Za-z0-9._+-], at most 100 characters)")
    if size > USTAR_MAX_MEMBER:
        raise ArtifactError(
            f"{name}: {size} bytes is more than a USTAR member can hold (8 GiB)",
            hint="shrink the disk or split it; PAX/GNU extensions break VMware's importer",
        )
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = MEMBER_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.type = tarfile.REGTYPE
    return info.tobuf(tarfile.USTAR_FORMAT, "ascii", "strict")


def write_tar(out: Writer, members: Sequence[Member], mtime: int) -> None:
    """Write ``members`` in order as one USTAR archive, streaming stream- and chunk-backed members."""
    written = 0
    for m in members:
        out.write(tar_header(m.name, m.size, mtime))
        copied = _copy(m.content, out)
        if copied != m.size:
            raise ArtifactError(f"{m.name}: {copied} bytes, expected {m.size} (changed while packaging?)")
        pad = -m.size % BLOCK
        out.write(b"\0" * pad)
        written += BLOCK + m.size + pad
    written += 2 * BLOCK
    out.write(b"\0" * (2 * BLOCK + (-written % RECORD)))


def _copy(content: bytes | Readable | Iterable[bytes], out: Writer) -> int:
    if isinstance(content, bytes):
        out.write(content)
        return len(content)
    total = 0
    chunks = iter(lambda: content.read(CHUNK), b"") if isinstance(content, Readable) else content
    for chunk in chunks:
        out.write(chunk)
        total += len(chunk)
    return total


def manifest_text(entries: Sequence[tuple[str, str]]) -> bytes:
    """Manifest lines exactly ``SHA256(name)= hex`` (the spelling every importer accepts)."""
    return "".join(f"{MANIFEST_ALGORITHM}({name})= {digest}\n" for name, digest in entries).encode("ascii")


def parse_manifest(text: bytes) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """``{name: (algorithm, hex)}`` and one problem per bad, unsupported or repeated line."""
    entries: dict[str, tuple[str, str]] = {}
    problems: list[str] = []
    try:
        lines = text.decode("ascii").split("\n")
    except UnicodeDecodeError:
        return {}, ["manifest is not ASCII text"]
    if lines and lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines, 1):
        match = MANIFEST_LINE.match(line.rstrip("\r"))
        if not match:
            problems.append(f"manifest line {number}: not 'ALGO(name)= hex': {line[:80]!r}")
            continue
        algo, name, digest = match["algo"], match["name"], match["hex"]
        expected_len = {"SHA256": 64, "SHA512": 128}.get(algo)
        if expected_len is None:
            problems.append(f"manifest line {number}: unsupported algorithm {algo} (SHA256 or SHA512 only)")
        elif len(digest) != expected_len:
            problems.append(f"manifest line {number}: {algo} digest of {name} has {len(digest)} hex digits")
        elif name in entries:
            problems.append(f"manifest line {number}: {name} is listed twice")
        else:
            entries[name] = (algo, digest)
    return entries, problems


# --- reading: one tar header, decoded field by field (never ``tarfile``), as verify-ova walks an OVA ---


class TarHeaderError(ValueError):
    """A tar header field that no honest archiver writes (one line: which field and why)."""


@dataclass(frozen=True)
class TarHeader:
    name: str
    size: int
    type: bytes
    linkname: str
    magic: bytes


# (field, offset, length) of every numeric USTAR field.
_NUMERIC_FIELDS = (("mode", 100, 8), ("uid", 108, 8), ("gid", 116, 8), ("size", 124, 12), ("mtime", 136, 12),
                   ("devmajor", 329, 8), ("devminor", 337, 8))  # fmt: skip
_OCTAL = re.compile(rb"[ ]*([0-7]*)[ \0]*")


def parse_tar_header(block: bytes) -> TarHeader:
    """One 512-byte header: checksum first, then every numeric field (octal or base-256, never
    negative, within its width), then ASCII names. ``TarHeaderError`` names the first bad field."""
    stored = _tar_number(block, "chksum", 148, 8)
    unsigned = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    signed = unsigned - 2 * sum(b for b in block[:148] + block[156:] if b & 0x80)
    if stored not in (unsigned, signed):
        raise TarHeaderError(f"bad checksum (stored {stored}, computed {unsigned})")
    numbers = {name: _tar_number(block, name, off, length) for name, off, length in _NUMERIC_FIELDS}
    magic = block[257:265]
    try:
        name = block[0:100].split(b"\0", 1)[0].decode("ascii")
        prefix = block[345:500].split(b"\0", 1)[0].decode("ascii") if magic[:5] == b"ustar" else ""
        linkname = block[157:257].split(b"\0", 1)[0].decode("ascii")
    except UnicodeDecodeError as e:
        raise TarHeaderError(f"a name is not ASCII (byte {e.start})") from e
    if prefix:
        name = f"{prefix}/{name}"
    return TarHeader(name, numbers["size"], block[156:157] or b"\0", linkname, magic)


def _tar_number(block: bytes, name: str, offset: int, length: int) -> int:
    raw = block[offset : offset + length]
    if raw[0] in (0x80, 0xFF):  # GNU base-256: big-endian two's complement, first byte is the sign
        value = int.from_bytes(raw[1:], "big", signed=False)
        if raw[0] == 0xFF:
            value -= 1 << (8 * (length - 1))
        if value < 0:
            raise TarHeaderError(f"{name} field is negative ({value}, base-256)")
        return value
    match = _OCTAL.fullmatch(raw)
    if match is None:
        raise TarHeaderError(f"{name} field {raw!r} is not octal")
    return int(match.group(1) or b"0", 8)


# --- the optional certificate (.cert): signed digest of the manifest + the signer's certificate ---


def certificate_size(key: rsa.RSAPrivateKey, cert_pem: bytes, manifest_name: str) -> int:
    """The .cert size, known before signing (an RSA signature is exactly the key size)."""
    return len(f"{MANIFEST_ALGORITHM}({manifest_name})= ".encode()) + key.key_size // 4 + 1 + len(cert_pem)


def sign_manifest(manifest: bytes, manifest_name: str, key: rsa.RSAPrivateKey, cert_pem: bytes) -> bytes:
    """``SHA256(name.mf)= <hex RSA signature>`` then the PEM certificate (as ``openssl dgst -sign`` makes)."""
    signature = key.sign(manifest, padding.PKCS1v15(), hashes.SHA256())
    return f"{MANIFEST_ALGORITHM}({manifest_name})= {signature.hex()}\n".encode() + cert_pem


def certificate_problems(cert_data: bytes, manifest: bytes, manifest_name: str) -> list[str]:
    """Why a .cert does not vouch for ``manifest``; empty when the signature checks out."""
    first, _, rest = cert_data.partition(b"\n")
    match = MANIFEST_LINE.match(first.decode("ascii", errors="replace").rstrip("\r"))
    if not match or match["name"] != manifest_name:
        return [f"certificate: first line is not 'SHA256({manifest_name})= <signature>'"]
    algorithms: dict[str, hashes.HashAlgorithm] = {"SHA256": hashes.SHA256(), "SHA512": hashes.SHA512()}
    algorithm = algorithms.get(match["algo"])
    if algorithm is None:
        return [f"certificate: unsupported algorithm {match['algo']}"]
    try:
        cert = x509.load_pem_x509_certificate(rest)
    except ValueError as e:
        return [f"certificate: no PEM certificate after the signature line ({e})"]
    public = cert.public_key()
    if not isinstance(public, rsa.RSAPublicKey):
        return ["certificate: not an RSA certificate"]
    try:
        public.verify(bytes.fromhex(match["hex"]), manifest, padding.PKCS1v15(), algorithm)
    except (InvalidSignature, ValueError):
        return [f"certificate: the signature does not match {manifest_name}"]
    return []
