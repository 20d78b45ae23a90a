"""Signed HEPiX image lists: the document sites (vmcatcher, cloudkeeper, atrope) trust.

The catalogue calls ``build_image_list`` + ``sign_image_list`` for each new VO list version;
``verify.py`` reads lists back the way a site does.

Contract notes (additions to docs/architecture.md, all backwards compatible):
- ``build_image_list`` takes optional keyword-only ``identifier``, ``title``, ``description``
  (default: a uuid5 of ``uri``, and a text naming the VO), so a list keeps its ``dc:identifier``
  across versions without the caller storing it.
- ``load_signing_identity(settings=None, key=None, cert=None, environ=None)`` returns a
  ``SigningIdentity`` with ``.key_pem``, ``.cert_pem`` and ``.endorser`` (DN/CA taken from the
  certificate, so the list's ``hv:endorser`` always matches the signer).
- Numbers (``hv:size``, ``hv:ram_minimum``, ...) are JSON integers as in hepixvmitrust; the
  reader (``ImageListEntry.from_hepix``) also accepts AppDB's digit strings.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from pipeline.errors import ConfigError, PipelineError
from pipeline.settings import Settings

DATE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # hepixvmitrust's time_format_definition
DEFAULT_SOURCE = "https://appdb.egi.eu/"  # AppDB's default dc:source, kept when the caller has none

# Required keys, by level: hepixvmitrust's sets, plus what atrope (19 image keys) and cloudkeeper demand.
LIST_REQUIRED = (
    "dc:date:created",
    "dc:date:expires",
    "dc:identifier",
    "dc:description",
    "dc:title",
    "dc:source",
    "hv:version",
    "hv:uri",
    "hv:endorser",
    "hv:images",
)
ENDORSER_REQUIRED = ("hv:dn", "hv:ca", "hv:email", "dc:creator")
IMAGE_REQUIRED = (
    "dc:identifier",
    "dc:title",
    "dc:description",
    "hv:uri",
    "hv:size",
    "sl:checksum:sha512",
    "sl:arch",
    "sl:os",
    "sl:osname",
    "sl:osversion",
    "sl:comments",
    "hv:hypervisor",
    "hv:format",
    "hv:version",
    "ad:group",
    "ad:mpuri",
    "ad:user:fullname",
    "ad:user:guid",
    "ad:user:uri",
)

ENV_KEY = "VMI_SIGNING_KEY"
ENV_CERT = "VMI_SIGNING_CERT"
ENV_KEY_PASSWORD = "VMI_SIGNING_KEY_PASSWORD"
ENV_EMAIL = "VMI_SIGNING_EMAIL"


def format_date(when: datetime) -> str:
    """``when`` in UTC as hepixvmitrust writes it (naive datetimes are taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime(DATE_FORMAT)


def parse_date(text: str) -> datetime:
    """A HEPiX date (``%Y-%m-%dT%H:%M:%SZ``) as an aware UTC datetime; ``ValueError`` otherwise."""
    return datetime.strptime(text, DATE_FORMAT).replace(tzinfo=UTC)


@dataclass(frozen=True)
class ImageListEntry:
    """One endorsed image with every field HEPiX and AppDB consumers read.

    ``ram_minimum``/``ram_recommended`` are MiB, ``size`` is bytes of the file at ``uri``.
    """

    identifier: str  # dc:identifier, stable per appliance (sites key their cache on it)
    title: str  # dc:title
    description: str  # dc:description
    uri: str  # hv:uri: where sites download the image
    size: int  # hv:size
    sha512: str  # sl:checksum:sha512
    version: str  # hv:version (the appliance version)
    arch: str = "x86_64"  # sl:arch
    os: str = "Linux"  # sl:os
    osname: str = ""  # sl:osname, e.g. Debian
    osversion: str = ""  # sl:osversion, e.g. 12
    comments: str = ""  # sl:comments
    hypervisor: str = "QEMU,KVM"  # hv:hypervisor
    format: str = "OVA"  # hv:format
    ram_minimum: int = 0  # hv:ram_minimum
    core_minimum: int = 0  # hv:core_minimum
    ram_recommended: int | None = None  # ad:ram_recommended
    core_recommended: int | None = None  # ad:core_recommended
    expires: str | None = None  # per-image dc:date:expires (cloudkeeper requires it)
    mpuri: str = ""  # ad:mpuri: catalogue page of this version
    base_mpuri: str = ""  # ad:base_mpuri: catalogue page of the appliance
    appid: str = ""  # ad:appid
    group: str = "General group"  # ad:group
    user_fullname: str = ""  # ad:user:fullname (the maintainer)
    user_guid: str = ""  # ad:user:guid
    user_uri: str = ""  # ad:user:uri

    def to_hepix(self) -> dict[str, Any]:
        """``{"hv:image": {...}}`` with every key present (atrope rejects lists missing any)."""
        image: dict[str, Any] = {
            "dc:identifier": self.identifier,
            "dc:title": self.title,
            "dc:description": self.description,
            "hv:uri": self.uri,
            "hv:size": self.size,
            "sl:checksum:sha512": self.sha512,
            "hv:version": self.version,
            "sl:arch": self.arch,
            "sl:os": self.os,
            "sl:osname": self.osname,
            "sl:osversion": self.osversion,
            "sl:comments": self.comments,
            "hv:hypervisor": self.hypervisor,
            "hv:format": self.format,
            "hv:ram_minimum": self.ram_minimum,
            "hv:core_minimum": self.core_minimum,
            "ad:mpuri": self.mpuri,
            "ad:base_mpuri": self.base_mpuri,
            "ad:appid": self.appid,
            "ad:group": self.group,
            "ad:user:fullname": self.user_fullname,
            "ad:user:guid": self.user_guid,
            "ad:user:uri": self.user_uri,
        }
        if self.ram_recommended is not None:
            image["ad:ram_recommended"] = self.ram_recommended
        if self.core_recommended is not None:
            image["ad:core_recommended"] = self.core_recommended
        if self.expires is not None:
            image["dc:date:expires"] = self.expires
        return {"hv:image": image}

    @classmethod
    def from_hepix(cls, item: Mapping[str, Any], where: str = "hv:images[]") -> ImageListEntry:
        """Read an image back; ``ConfigError`` lists every missing or malformed key with its path."""
        image = item.get("hv:image") if isinstance(item, Mapping) else None
        if not isinstance(image, Mapping):
            raise ConfigError(f"{where}: is not an object with an 'hv:image' member")
        problems = [f"{where}.hv:image.{k}: is required" for k in IMAGE_REQUIRED if k not in image]

        def number(key: str, default: int | None) -> int | None:
            value = image.get(key, default)
            if value is None or isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, str) and value.isdigit():
                return int(value)
            problems.append(f"{where}.hv:image.{key}: {value!r} is not a whole number")
            return default

        size = number("hv:size", 0)
        values = dict(
            ram_minimum=number("hv:ram_minimum", 0) or 0,
            core_minimum=number("hv:core_minimum", 0) or 0,
            ram_recommended=number("ad:ram_recommended", None),
            core_recommended=number("ad:core_recommended", None),
        )
        if problems:
            raise ConfigError(problems)
        text = {f.name: str(image[k]) for f, k in _TEXT_FIELDS if k in image}
        return cls(size=size or 0, expires=image.get("dc:date:expires"), **text, **values)  # type: ignore[arg-type]


_KEYS = {
    "identifier": "dc:identifier",
    "title": "dc:title",
    "description": "dc:description",
    "uri": "hv:uri",
    "sha512": "sl:checksum:sha512",
    "version": "hv:version",
    "arch": "sl:arch",
    "os": "sl:os",
    "osname": "sl:osname",
    "osversion": "sl:osversion",
    "comments": "sl:comments",
    "hypervisor": "hv:hypervisor",
    "format": "hv:format",
    "mpuri": "ad:mpuri",
    "base_mpuri": "ad:base_mpuri",
    "appid": "ad:appid",
    "group": "ad:group",
    "user_fullname": "ad:user:fullname",
    "user_guid": "ad:user:guid",
    "user_uri": "ad:user:uri",
}
_TEXT_FIELDS = [(f, _KEYS[f.name]) for f in dataclasses.fields(ImageListEntry) if f.name in _KEYS]


@dataclass(frozen=True)
class Endorser:
    """Who vouches for the list: ``dn``/``ca`` in OpenSSL's ``/DC=.../CN=...`` form, as sites compare them."""

    dn: str
    ca: str
    email: str
    name: str  # dc:creator

    def to_hepix(self) -> dict[str, Any]:
        return {"hv:x509": {"hv:dn": self.dn, "hv:ca": self.ca, "hv:email": self.email, "dc:creator": self.name}}

    @classmethod
    def from_certificate(cls, cert: x509.Certificate, email: str | None = None, name: str | None = None) -> Endorser:
        """The endorser a certificate speaks for (so ``hv:endorser`` always equals the signer)."""
        return cls(
            dn=openssl_dn(cert.subject),
            ca=openssl_dn(cert.issuer),
            email=email or certificate_email(cert) or "",
            name=name or _first(cert.subject, NameOID.COMMON_NAME) or openssl_dn(cert.subject),
        )


_SHORT = {NameOID.EMAIL_ADDRESS: "emailAddress", NameOID.USER_ID: "UID", NameOID.SERIAL_NUMBER: "serialNumber"}


def openssl_dn(name: x509.Name) -> str:
    """A Name as OpenSSL's one-line form in certificate order (``/DC=org/DC=x/CN=y``), HEPiX's DN syntax."""
    parts = []
    for rdn in name.rdns:
        for attr in rdn:
            key = _SHORT.get(attr.oid) or attr.rfc4514_attribute_name
            value = attr.value if isinstance(attr.value, str) else attr.value.decode(errors="replace")
            parts.append(f"/{key}={value}")
    return "".join(parts)


def _first(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    attrs = name.get_attributes_for_oid(oid)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode(errors="replace")


def certificate_email(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        emails = san.get_values_for_type(x509.RFC822Name)
        if emails:
            return emails[0]
    except x509.ExtensionNotFound:
        pass
    return _first(cert.subject, NameOID.EMAIL_ADDRESS)


def list_identifier(uri: str) -> str:
    """The stable ``dc:identifier`` of the list served at ``uri`` (uuid5: same URL, same id, every version)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, uri))


def build_image_list(
    vo: str,
    entries: Sequence[ImageListEntry],
    endorser: Endorser,
    hv_version: str | int,
    created: datetime,
    expires: datetime,
    uri: str,
    source: str = DEFAULT_SOURCE,
    *,
    identifier: str | None = None,
    title: str | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """The HEPiX JSON document ``{"hv:imagelist": {...}}`` of a VO's endorsed images.

    Refuses a list that sites would reject anyway (expiry before creation, duplicate image ids).
    """
    if expires <= created:
        raise PipelineError(f"image list for {vo}: expires ({expires}) must be after created ({created})")
    seen: set[str] = set()
    for e in entries:
        if e.identifier in seen:
            raise PipelineError(f"image list for {vo}: image dc:identifier {e.identifier} appears twice")
        seen.add(e.identifier)
    return {
        "hv:imagelist": {
            "dc:date:created": format_date(created),
            "dc:date:expires": format_date(expires),
            "dc:identifier": identifier or list_identifier(uri),
            "dc:description": description or f"VO-wide image list for the {vo} VO.",
            "dc:title": title or f"Image list for {vo}",
            "dc:source": source,
            "hv:version": str(hv_version),
            "hv:uri": uri,
            "hv:endorser": endorser.to_hepix(),
            "hv:images": [e.to_hepix() for e in entries],
            "ad:vo": vo,
            "ad:num_of_images": len(entries),
        }
    }


def serialise_image_list(document: Mapping[str, Any]) -> bytes:
    """The exact bytes that get signed: sorted keys, 2-space indent, as hepixvmitrust's signer writes."""
    return (json.dumps(document, sort_keys=True, indent=2) + "\n").encode()


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
