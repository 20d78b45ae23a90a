"""The OVA container: a USTAR tar (no PAX) with the descriptor first, then the manifest (and
certificate), then the disks in References order (DSP0243; builders-and-ovf.md §2.5-2.6).

Headers come from ``tarfile.TarInfo.tobuf(USTAR_FORMAT)`` (the standard library's encoder, strict
about field overflows) with fixed owner, mode and mtime, so the same inputs give the same bytes.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from pipeline.errors import ArtifactError, ConfigError
from pipeline.fsutil import CHUNK, Digests

BLOCK = 512
RECORD = 20 * BLOCK  # what tar itself pads archives to
MEMBER_MODE = 0o644
USTAR_MAX_MEMBER = 8**11 - 1  # the 11-digit octal size field: just under 8 GiB
MANIFEST_ALGORITHM = "SHA256"
MANIFEST_LINE = re.compile(r"^(?P<algo>[A-Z0-9]+)\((?P<name>[^()\n]+)\)= (?P<hex>[0-9a-f]+)$")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")


class Writer(Protocol):
    def write(self, data: bytes) -> int: ...


class ParallelHashingWriter:
    """``fsutil.HashingWriter`` with sha512 in a second thread (hashlib releases the GIL for big
    buffers): writing a multi-GiB OVA then costs the slower digest, not the sum of both."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._sha256 = hashlib.sha256()
        self._sha512 = hashlib.sha512()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha512")
        self.size = 0

    def write(self, data: bytes) -> int:
        pending = self._pool.submit(self._sha512.update, data)
        try:
            self._sha256.update(data)
            written = self._raw.write(data)
        finally:
            pending.result()
        self.size += len(data)
        return written

    def digests(self) -> Digests:
        return Digests(self.size, self._sha256.hexdigest(), self._sha512.hexdigest())

    def close(self) -> None:
        self._pool.shutdown()

    def __enter__(self) -> ParallelHashingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Member:
    """One file of the OVA: small ones carry their bytes, disks are streamed from ``path``."""

    name: str
    size: int
    data: bytes | None = None
    path: Path | None = None

    @classmethod
    def from_bytes(cls, name: str, data: bytes) -> Member:
        return cls(name, len(data), data=data)


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
    """Write ``members`` in order as one USTAR archive, streaming file-backed members in chunks."""
    written = 0
    for m in members:
        out.write(tar_header(m.name, m.size, mtime))
        if m.data is not None:
            out.write(m.data)
            copied = len(m.data)
        else:
            assert m.path is not None
            copied = _copy(m.path, out)
        if copied != m.size:
            raise ArtifactError(f"{m.path or m.name}: {copied} bytes, expected {m.size} (changed while packaging?)")
        pad = -m.size % BLOCK
        out.write(b"\0" * pad)
        written += BLOCK + m.size + pad
    written += 2 * BLOCK
    out.write(b"\0" * (2 * BLOCK + (-written % RECORD)))


def _copy(path: Path, out: Writer) -> int:
    total = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
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


# --- the optional certificate (.cert): signed digest of the manifest + the signer's certificate ---


def load_signer(key_path: Path, cert_path: Path) -> tuple[rsa.RSAPrivateKey, bytes]:
    """The RSA key and PEM certificate for signing; ``ConfigError`` if unreadable or mismatched."""
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"{key_path}: --sign-key: not an unencrypted PEM private key ({e})") from e
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{cert_path}: --sign-cert: not a PEM certificate ({e})") from e
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"{key_path}: --sign-key: OVF certificates need an RSA key (VMware verifies RSA only)")
    public = cert.public_key()
    if not isinstance(public, rsa.RSAPublicKey) or public.public_numbers() != key.public_key().public_numbers():
        raise ConfigError(f"{cert_path}: --sign-cert: does not match the key in {key_path}")
    return key, cert.public_bytes(serialization.Encoding.PEM)


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
