"""Distinguished names in both spellings sites meet: OpenSSL's slash form (image lists, vmcatcher)
and RFC 4514 (LDAP, Python, atrope's configuration). Pure: names in, text out.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID

from pipeline.errors import ConfigError
from pipeline.formats.imagelist import openssl_dn

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
