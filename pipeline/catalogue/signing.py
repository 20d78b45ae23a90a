"""The catalogue's side of signed VO image lists: catalogue rows in, S/MIME bytes out.

Building and signing the HEPiX document is ``pipeline.formats.imagelist``'s job; this module only
maps versions and images to its ``ImageListEntry`` and holds the endorser's identity, loaded from
``VMI_SIGNING_KEY``/``VMI_SIGNING_CERT`` (files outside the repository), never from the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from pipeline.catalogue.contract import ImageInfo, VersionInfo
from pipeline.catalogue.pages.links import download_url
from pipeline.catalogue.settings import CatalogueSettings
from pipeline.formats.imagelist import (
    ImageListEntry,
    SigningIdentity,
    build_image_list,
    format_date,
    load_signing_identity,
    sign_image_list,
)


@dataclass(frozen=True)
class ImageListSigner:
    identity: SigningIdentity
    public_url: str
    settings: CatalogueSettings | None = None  # to address repository files from the configured public base

    def entry(self, version: VersionInfo, image: ImageInfo) -> ImageListEntry:
        page = f"{self.public_url}/appliances/{version.appliance}"
        return ImageListEntry(
            identifier=image.identifier,
            title=image.title,
            description=version.notes,
            uri=image.uri if self.settings is None else download_url(self.settings, image) or image.uri,
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
        entries = [self.entry(v, i) for v in versions for i in v.images]
        uri = f"{self.public_url}/vo/{vo}/image.list"
        document = build_image_list(
            vo, entries, self.identity.endorser, hv_version, created, expires, uri, source=self.public_url + "/"
        )
        signed: bytes = sign_image_list(document, self.identity.key_pem, self.identity.cert_pem)
        return signed


def load_signer(settings: CatalogueSettings) -> ImageListSigner | None:
    """The signer of this catalogue, or None when no key/certificate is configured (lists are then refused)."""
    if settings.signing_key is None or settings.signing_cert is None:
        return None
    identity = load_signing_identity(key=settings.signing_key, cert=settings.signing_cert)
    return ImageListSigner(identity, settings.public_url, settings)
