"""A throwaway CA and endorser certificate for local use and tests (``invoke dev-ca``).

Production endorsers use an IGTF-accredited certificate; these files are NOT for production.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pipeline.errors import ConfigError
from pipeline.fsutil import atomic_write, write_text_atomic
from pipeline.log import log

WARNING = (
    "THROWAWAY DEVELOPMENT CA - NOT FOR PRODUCTION. Anyone with these files can sign image lists "
    "that trust this CA. Use an IGTF-accredited endorser certificate for real VOs."
)


@dataclass(frozen=True)
class Issued:
    """A private key and its certificate, as PEM."""

    key_pem: bytes
    cert_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def key(self) -> rsa.RSAPrivateKey:
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        return key


def _name(*parts: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in parts])


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key: rsa.RSAPrivateKey, cert: x509.Certificate) -> Issued:
    return Issued(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        cert.public_bytes(serialization.Encoding.PEM),
    )


def make_ca(common_name: str = "vmi-pipeline DEV CA - NOT FOR PRODUCTION", days: int = 365) -> Issued:
    """A self-signed CA certificate (IGTF-style DN with DC components)."""
    key = _key()
    name = _name(
        (NameOID.DOMAIN_COMPONENT, "org"),
        (NameOID.DOMAIN_COMPONENT, "vmi-pipeline"),
        (NameOID.COMMON_NAME, common_name),
    )
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _pem(key, cert)


def issue_endorser(
    ca: Issued,
    common_name: str = "vmi-pipeline dev endorser",
    email: str = "endorser@example.org",
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    """An S/MIME signing certificate issued by ``ca`` (validity window overridable for tests)."""
    key = _key()
    now = dt.datetime.now(dt.UTC)
    ca_cert = ca.certificate
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            _name(
                (NameOID.DOMAIN_COMPONENT, "org"),
                (NameOID.DOMAIN_COMPONENT, "vmi-pipeline"),
                (NameOID.ORGANIZATION_NAME, "Development"),
                (NameOID.COMMON_NAME, common_name),
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(minutes=5))
        .not_valid_after(not_after or now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, True, False, False, False, False, False, False, False), critical=True
        )  # digitalSignature, nonRepudiation
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return _pem(key, cert)


@dataclass(frozen=True)
class DevCa:
    """Where ``make_dev_ca`` put its files."""

    folder: Path
    ca_cert: Path
    endorser_key: Path
    endorser_cert: Path
    endorser_dn: str
    endorser_rfc4514: str = ""

    def summary(self) -> str:
        return "\n".join(
            [
                f"WARNING: {WARNING}",
                f"CA certificate (give to sites: verify-list --ca): {self.ca_cert}",
                f"endorser key:  {self.endorser_key}",
                f"endorser cert: {self.endorser_cert}",
                f"endorser DN:   {self.endorser_dn}",
                f"endorser DN (RFC 4514): {self.endorser_rfc4514}",
                f"use it: export VMI_SIGNING_KEY={self.endorser_key} VMI_SIGNING_CERT={self.endorser_cert}",
            ]
        )


def make_dev_ca(out: Path) -> DevCa:
    """Write ``ca.pem``, ``ca.key``, ``endorser.key``, ``endorser.pem`` and a warning README into ``out``."""
    from pipeline.formats.imagelist import openssl_dn

    ca = make_ca()
    endorser = issue_endorser(ca)
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o700)
    files = {
        "ca.pem": ca.cert_pem,
        "ca.key": ca.key_pem,
        "endorser.pem": endorser.cert_pem,
        "endorser.key": endorser.key_pem,
    }
    for name, data in files.items():
        with atomic_write(out / name) as f:
            f.write(data)
        (out / name).chmod(0o600 if name.endswith(".key") else 0o644)
    write_text_atomic(out / "README-NOT-FOR-PRODUCTION.txt", WARNING + "\n")
    log.warning("%s", WARNING)
    subject = endorser.certificate.subject
    return DevCa(
        out, out / "ca.pem", out / "endorser.key", out / "endorser.pem", openssl_dn(subject), rfc4514_dn(subject)
    )


# --- distinguished names in both spellings sites meet ---------------------------------------------

_RFC4514_NAMES = {"emailAddress": NameOID.EMAIL_ADDRESS, "E": NameOID.EMAIL_ADDRESS, "UID": NameOID.USER_ID}


def rfc4514_dn(name: x509.Name) -> str:
    """A Name as RFC 4514 text, most specific first (``CN=y,O=x,DC=org``): LDAP's and Python's spelling."""
    return name.rfc4514_string({NameOID.EMAIL_ADDRESS: "emailAddress"})


def parse_dn(text: str, what: str = "--endorser-dn") -> str:
    """A DN given as OpenSSL's slash form or as RFC 4514, returned in the slash form image lists use.

    ``/DC=org/DC=x/CN=y`` is kept as it is (certificate order); ``CN=y,DC=x,DC=org`` is read as RFC 4514,
    whose order is the reverse, so both spellings of one certificate's subject give the same string.
    Bad input: one line naming ``what``.
    """
    from pipeline.formats.imagelist import openssl_dn

    value = text.strip()
    if value.startswith("/"):
        if "=" not in value or any("=" not in part for part in value[1:].split("/") if part):
            raise ConfigError(f"{what}: {text!r} is not a DN: each /-separated part must be KEY=value")
        return value
    try:
        name = x509.Name.from_rfc4514_string(value, _RFC4514_NAMES)
    except ValueError as e:
        raise ConfigError(
            f"{what}: {text!r} is neither an OpenSSL DN (/DC=org/CN=name) nor an RFC 4514 DN (CN=name,DC=org)"
        ) from e
    if not name.rdns:
        raise ConfigError(f"{what}: the DN is empty")
    return openssl_dn(name)  # the parser already returns the RDNs in certificate order


def issue_crl(
    ca: Issued,
    revoked: Sequence[x509.Certificate] = (),
    last_update: dt.datetime | None = None,
    next_update: dt.datetime | None = None,
) -> bytes:
    """A CRL of ``ca`` (PEM) revoking ``revoked``: what a CA publishes and ``verify-list --crl`` reads."""
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(last_update or now - dt.timedelta(minutes=5))
        .next_update(next_update or now + dt.timedelta(days=7))
    )
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(cert.serial_number).revocation_date(now).build()
        )
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
