"""The component that signs VO image lists: the endorser's key, loaded once and only when a list is signed.

The HEPiX document itself is ``pipeline.formats.imagelist``'s (a pure format); this module maps
catalogue versions and images to its ``ImageListEntry``, loads the endorser's identity from
``VMI_SIGNING_KEY``/``VMI_SIGNING_CERT`` (files outside the repository, never the database) and signs
the document's bytes as S/MIME. ``ImageListSigner`` reads the key at its first ``sign`` (the first
endorse, revoke or archive that publishes a list), so opening the catalogue, publishing and serving
pages never load a private key.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from pipeline.catalogue.contract import ImageInfo, VersionInfo
from pipeline.catalogue.pages.links import download_url
from pipeline.catalogue.settings import CatalogueSettings
from pipeline.errors import ConfigError, PipelineError
from pipeline.formats.imagelist import (
    Endorser,
    ImageListEntry,
    build_image_list,
    format_date,
    serialise_image_list,
)
from pipeline.settings import Settings

ENV_KEY = "VMI_SIGNING_KEY"
ENV_CERT = "VMI_SIGNING_CERT"
ENV_KEY_PASSWORD = "VMI_SIGNING_KEY_PASSWORD"
ENV_EMAIL = "VMI_SIGNING_EMAIL"


def sign_image_list(document: Mapping[str, Any], key_pem: bytes, cert_pem: bytes) -> bytes:
    """S/MIME ``multipart/signed`` message: the JSON list plus a detached SHA-256 CMS signature.

    Verifies with ``openssl smime -verify``, vmcatcher and atrope.
    """
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as e:
        raise PipelineError(f"cannot load the signing key or certificate: {e}") from e
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise PipelineError("the signing key must be RSA or EC")
    if _public_der(key.public_key()) != _public_der(cert.public_key()):
        raise PipelineError("the signing key does not belong to the signing certificate")
    return (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(serialise_image_list(document))
        .add_signer(cert, key, hashes.SHA256())
        .sign(serialization.Encoding.SMIME, [pkcs7.PKCS7Options.DetachedSignature])
    )


def _public_der(public: Any) -> bytes:
    return bytes(public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


@dataclass(frozen=True)
class SigningIdentity:
    """The endorser's key and certificate, loaded from outside the repository."""

    key_pem: bytes
    cert_pem: bytes
    endorser: Endorser
    not_after: datetime


def load_signing_identity(
    settings: Settings | None = None,
    key: Path | None = None,
    cert: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> SigningIdentity:
    """Key + certificate from ``key``/``cert`` or ``$VMI_SIGNING_KEY``/``$VMI_SIGNING_CERT`` (paths).

    Files inside the project checkout are refused: an endorser key never lives in the repository.
    ``$VMI_SIGNING_KEY_PASSWORD`` decrypts an encrypted key; ``$VMI_SIGNING_EMAIL`` sets ``hv:email``
    when the certificate carries none.
    """
    env = os.environ if environ is None else environ
    key_path = key or (Path(env[ENV_KEY]) if env.get(ENV_KEY) else None)
    cert_path = cert or (Path(env[ENV_CERT]) if env.get(ENV_CERT) else None)
    if key_path is None or cert_path is None:
        raise ConfigError(
            f"no endorser signing identity: set {ENV_KEY} and {ENV_CERT} to the key and certificate files",
            hint="for local use, `invoke dev-ca` makes a throwaway pair (never for production)",
        )
    problems = []
    for what, path in (("key", key_path), ("certificate", cert_path)):
        resolved = path.expanduser().resolve()
        if settings is not None and resolved.is_relative_to(settings.root):
            problems.append(f"{path}: the signing {what} must not live inside the repository ({settings.root})")
        elif not resolved.is_file():
            problems.append(f"{path}: signing {what} file not found")
    if problems:
        raise ConfigError(problems)
    key_pem, cert_pem = key_path.expanduser().read_bytes(), cert_path.expanduser().read_bytes()
    password = env.get(ENV_KEY_PASSWORD)
    try:
        private = serialization.load_pem_private_key(key_pem, password.encode() if password else None)
        certificate = x509.load_pem_x509_certificate(cert_pem)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{key_path} / {cert_path}: cannot load the signing key or certificate: {e}") from e
    if password:  # hand the signer an unencrypted copy in memory only
        key_pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    endorser = Endorser.from_certificate(certificate, email=env.get(ENV_EMAIL))
    return SigningIdentity(key_pem, cert_pem, endorser, certificate.not_valid_after_utc)


class ImageListSigner:
    """Builds and signs a VO's image list; the endorser's key is read at the first ``sign`` and kept."""

    def __init__(self, settings: CatalogueSettings, key: Path, cert: Path) -> None:
        self.settings = settings  # addresses repository files from the configured public base
        self.public_url = settings.public_url
        self._key, self._cert = key, cert
        self._identity: SigningIdentity | None = None
        self._lock = threading.Lock()  # the service signs from worker threads

    @property
    def identity(self) -> SigningIdentity:
        with self._lock:
            if self._identity is None:
                self._identity = load_signing_identity(key=self._key, cert=self._cert)
            return self._identity

    def certificate(self) -> x509.Certificate:
        """The endorser's certificate (pages show its DNs): read without touching the key."""
        try:
            return x509.load_pem_x509_certificate(self._cert.expanduser().read_bytes())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{self._cert}: cannot read the signing certificate: {e}") from e

    def entry(self, version: VersionInfo, image: ImageInfo) -> ImageListEntry:
        page = f"{self.public_url}/appliances/{version.appliance}"
        return ImageListEntry(
            identifier=image.identifier,
            title=image.title,
            description=version.notes,
            uri=download_url(self.settings, image) or image.uri,
            size=image.size,
            sha512=image.sha512,
            version=version.version,
            arch=image.arch,
            os=image.os_family.capitalize(),
            osname=image.os_name,
            osversion=image.os_version,
            comments=f"sha256:{image.sha256}",
            hypervisor=image.hypervisor,
            format=image.format.upper(),
            ram_minimum=image.min_ram_mb,
            core_minimum=image.min_cores,
            ram_recommended=image.recommended_ram_mb,
            core_recommended=image.recommended_cores,
            expires=format_date(version.expires),
            mpuri=f"{page}/{version.version}",
            base_mpuri=page,
            appid=version.appliance,
            user_uri=page,
        )

    def sign(
        self, vo: str, versions: Sequence[VersionInfo], hv_version: int, created: datetime, expires: datetime
    ) -> bytes:
        identity = self.identity
        entries = [self.entry(v, i) for v in versions for i in v.images]
        uri = f"{self.public_url}/vo/{vo}/image.list"
        document = build_image_list(
            vo, entries, identity.endorser, hv_version, created, expires, uri, source=self.public_url + "/"
        )
        return sign_image_list(document, identity.key_pem, identity.cert_pem)


def load_signer(settings: CatalogueSettings) -> ImageListSigner | None:
    """The signer of this catalogue (its key not read yet), or None when no key/certificate is configured
    (lists are then refused)."""
    if settings.signing_key is None or settings.signing_cert is None:
        return None
    return ImageListSigner(settings, settings.signing_key, settings.signing_cert)
