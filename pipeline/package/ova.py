"""The package stage's side of the OVA: hashing the archive as it is written, and loading the
signer's key and certificate from files. The container format itself is ``pipeline.formats.ova``.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pipeline.errors import ConfigError
from pipeline.fsutil import Digests


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
