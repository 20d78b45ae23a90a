"""What a site needs to subscribe to a VO's image list, ready to paste (the VO page shows it).

atrope, vmcatcher and cloudkeeper all want the list URL; atrope and vmcatcher also pin the endorser
(subject DN and issuing CA DN, in OpenSSL's slash form, as ``hv:endorser`` carries them) and vmcatcher
the list identifier (``dc:identifier``, its subscription UUID). Facts: research/egi-ecosystem.md §3.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from cryptography import x509

from pipeline.catalogue.endorsements import ListSigner
from pipeline.formats.dn import rfc4514_dn
from pipeline.formats.imagelist import list_identifier, openssl_dn

IGTF_CA_DIR = "/etc/grid-security/certificates"  # where all three consumers look for trust anchors


@dataclass(frozen=True)
class Endorser:
    """The signing certificate's subject and issuer, in both spellings sites meet."""

    name: str  # its common name, as dc:creator
    dn: str  # /DC=org/.../CN=x: what hv:dn, atrope and vmcatcher compare
    dn_rfc4514: str  # CN=x,...,DC=org: what LDAP tools, Python and `openssl -nameopt RFC2253` print
    ca: str
    ca_rfc4514: str

    @classmethod
    def of(cls, cert: x509.Certificate) -> Endorser:
        names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        name = str(names[0].value) if names else openssl_dn(cert.subject)
        return cls(
            name, openssl_dn(cert.subject), rfc4514_dn(cert.subject), openssl_dn(cert.issuer), rfc4514_dn(cert.issuer)
        )


def endorser_of(signer: ListSigner | None) -> Endorser | None:
    """The identity this catalogue signs lists with, or None when it has none configured."""
    from pipeline.catalogue.signing import ImageListSigner

    if not isinstance(signer, ImageListSigner):
        return None
    return Endorser.of(signer.certificate())


def _yaml(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid double-quoted YAML scalar


@dataclass(frozen=True)
class SiteSetup:
    vo: str
    list_url: str
    identifier: str
    endorser: Endorser | None

    @classmethod
    def of(cls, vo: str, list_url: str, signer: ListSigner | None) -> SiteSetup:
        return cls(vo, list_url, list_identifier(list_url), endorser_of(signer))

    @property
    def atrope(self) -> str:
        """A source for atrope's ``hepix`` sources file (``sources.yaml``; ``hepix.yaml`` in older releases)."""
        if self.endorser is None:
            return ""
        return "\n".join(
            [
                f"{_yaml(self.vo)}:",
                f"  url: {_yaml(self.list_url)}",
                "  enabled: true",
                "  endorser:",
                f"    dn: {_yaml(self.endorser.dn)}",
                f"    ca: {_yaml(self.endorser.ca)}",
                '  token: ""',
                "  images: []  # empty: every image of the list",
                '  prefix: ""',
            ]
        )

    @property
    def vmcatcher(self) -> str:
        """Register the endorser, then subscribe (which links them; the subscription UUID is dc:identifier)."""
        if self.endorser is None:
            return ""
        q = shlex.quote
        return "\n".join(
            [
                f"export VMCATCHER_DIR_CERT={IGTF_CA_DIR}",
                f"vmcatcher_endorser --create --endorser_uuid={q(self.endorser.name)} \\",
                f"    --subject={q(self.endorser.dn)} \\",
                f"    --issuer={q(self.endorser.ca)}",
                f"vmcatcher_subscribe -s {q(self.list_url)}  # links the endorser created above",
                f"vmcatcher_subscribe -l  # the subscription UUID is the list's dc:identifier {self.identifier}",
                "vmcatcher_subscribe -U && vmcatcher_cache  # cron: 50 */6 * * *, after fetch-crl",
            ]
        )

    @property
    def cloudkeeper(self) -> str:
        """cloudkeeper verifies the signature against the CA directory but pins no endorser DN."""
        return "\n".join(
            [
                f"cloudkeeper sync --image-list={shlex.quote(self.list_url)} \\",
                f"    --verify-image-list --ca-dir={IGTF_CA_DIR}/ \\",
                "    --formats=qcow2 --backend-endpoint=127.0.0.1:50051",
            ]
        )

    @property
    def verify_list(self) -> str:
        """This project's own check, the way a site runs it before trusting anything."""
        parts = [f"invoke verify-list {shlex.quote(self.list_url)} --ca CA.pem"]
        if self.endorser is not None:
            parts.append(f"--endorser-dn {shlex.quote(self.endorser.dn)}")
        parts.append(f"--identifier {self.identifier}")
        return " \\\n    ".join(parts)
