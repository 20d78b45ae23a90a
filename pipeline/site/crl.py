"""``verify-list --crl``: refuse a list whose signer's certificate is revoked (vmcatcher's rule).

A CRL (PEM or DER, file or URL) is used only if its issuer's certificate is among the trusted CAs and
its signature verifies; an expired CRL, one issued in the future, or no CRL for the signer's CA is a
refusal, like smimeX509validation's; a signer whose serial number is listed is revoked.
"""

from __future__ import annotations

import datetime as dt
import email
import email.message
import email.policy
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs7

from pipeline.formats.imagelist import openssl_dn

MAX_CRL_BYTES = 16 * 1024 * 1024  # large national CAs publish CRLs of a few MB
_SIGNATURE_TYPES = ("application/pkcs7-signature", "application/x-pkcs7-signature")


def load_crls(data: bytes, source: str) -> tuple[list[x509.CertificateRevocationList], list[str]]:
    """The CRLs in ``data`` (PEM, possibly several, or one DER), or the one problem that makes it unusable."""
    try:
        if b"-----BEGIN X509 CRL-----" in data:
            blocks = data.split(b"-----BEGIN X509 CRL-----")[1:]
            return [x509.load_pem_x509_crl(b"-----BEGIN X509 CRL-----" + b) for b in blocks], []
        return [x509.load_der_x509_crl(data)], []
    except ValueError as e:
        return [], [f"{source}: not a CRL in PEM or DER ({e})"]


def signer_certificates(raw: bytes) -> list[x509.Certificate]:
    """The end-entity certificates embedded in an S/MIME signed list's signature (empty if unsigned)."""
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    parts = message.get_payload() if message.get_content_type() == "multipart/signed" else None
    if not isinstance(parts, list) or len(parts) != 2 or not isinstance(parts[1], email.message.Message):
        return []
    if parts[1].get_content_type() not in _SIGNATURE_TYPES:
        return []
    der = parts[1].get_payload(decode=True)
    try:
        certs = pkcs7.load_der_pkcs7_certificates(der) if isinstance(der, bytes) and der else []
    except ValueError:
        return []
    return [c for c in certs if not _is_ca(c)]


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def trusted_cas(ca: Path) -> list[x509.Certificate]:
    """The CA certificates of ``--ca`` (a PEM file, or a directory like /etc/grid-security/certificates)."""
    files = sorted(p for p in ca.iterdir() if p.suffix in (".pem", ".0", ".1", ".crt")) if ca.is_dir() else [ca]
    found = []
    for f in files:
        try:
            found += x509.load_pem_x509_certificates(f.read_bytes())
        except (ValueError, OSError):
            continue
    return found


def revocation_problems(
    signers: Sequence[x509.Certificate],
    crls: Sequence[x509.CertificateRevocationList],
    cas: Sequence[x509.Certificate],
    now: dt.datetime | None = None,
) -> list[str]:
    """One line per reason to refuse: revoked signer, unusable CRL, or no CRL for the signer's CA."""
    now = now or dt.datetime.now(dt.UTC)
    if not signers:
        return ["no signer certificate in the list to check against the CRL"]
    problems = []
    for cert in signers:
        issuer = openssl_dn(cert.issuer)
        usable = []
        for crl in (c for c in crls if c.issuer == cert.issuer):
            ca = next((c for c in cas if c.subject == crl.issuer), None)
            if ca is None or not crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
                problems.append(f"the CRL of {issuer} is not signed by a trusted CA: ignoring it")
            elif crl.last_update_utc > now:
                problems.append(
                    f"the CRL of {issuer} was issued in the future ({crl.last_update_utc:%Y-%m-%dT%H:%M:%SZ})"
                )
            elif crl.next_update_utc is not None and crl.next_update_utc < now:
                problems.append(
                    f"the CRL of {issuer} expired on {crl.next_update_utc:%Y-%m-%dT%H:%M:%SZ}: fetch a new one"
                )
            else:
                usable.append(crl)
        if not usable and not problems:
            problems.append(f"no CRL of the signer's CA {issuer} given (--crl)")
        for crl in usable:
            revoked = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
            if revoked is not None:
                problems.append(
                    f"signer {openssl_dn(cert.subject)} (serial {cert.serial_number:x}) is revoked since "
                    f"{revoked.revocation_date_utc:%Y-%m-%dT%H:%M:%SZ} by the CRL of {issuer}"
                )
    return problems


def check_revocation(source: str, crl_source: str, ca: Path, now: dt.datetime | None = None) -> tuple[str, ...]:
    """Refuse (``VerificationError``) the list at ``source`` if its signer is revoked or no usable CRL
    covers it; else the signer DNs that were checked, so the caller can bind them to its own verification."""
    from pipeline.errors import VerificationError
    from pipeline.site.verify import read_source

    crls, problems = load_crls(read_source(crl_source, MAX_CRL_BYTES), crl_source)
    signers = signer_certificates(read_source(source))
    problems = problems or revocation_problems(signers, crls, trusted_cas(ca), now)
    if problems:
        raise VerificationError(source, problems)
    return tuple(openssl_dn(c.subject) for c in signers)
