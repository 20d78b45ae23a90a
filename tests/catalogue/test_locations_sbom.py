"""Every location of an image and the version's SBOM, through the HTTP client and the service on
loopback: stored, served back byte for byte, and kept out of the signed image lists (primary URIs only)."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest

from pipeline.catalogue.contract import AppliancePayload, InvalidPayload, VersionPayload
from pipeline.catalogue.http_client import HttpCatalogue
from tests.catalogue.conftest import PASSING_AUDIT, LiveServer
from tests.catalogue.test_http import VO, _image, _tokens

SBOM = json.dumps({"bomFormat": "CycloneDX", "specVersion": "1.5", "version": 1, "components": []}, indent=2)
MIRROR = "oci://registry.example.org/vmi/debian-12:12-1.0@sha256:" + "ab" * 32


def test_locations_and_sbom_round_trip_and_the_signed_list_names_the_primary(live_server: LiveServer) -> None:
    tokens = _tokens(live_server)
    alice = HttpCatalogue(live_server.url, tokens["alice"])
    alice.ensure_appliance(AppliancePayload(name="debian-12", title="Debian 12", description="baseline", vos=(VO,)))
    qcow2 = _image(live_server, "1.0", "qcow2")
    image = qcow2.model_copy(update={"locations": [qcow2.uri, MIRROR]})
    info = alice.register_version(
        VersionPayload(appliance="debian-12", version="1.0", notes="first", images=(image,), sbom=SBOM)
    )
    assert info.images[0].locations == [qcow2.uri, MIRROR]
    assert info.sbom_sha256 == hashlib.sha256(SBOM.encode()).hexdigest()
    assert alice.get_version("debian-12", "1.0") == info

    with httpx.Client(base_url=live_server.url) as web:
        got = web.get("/api/v1/appliances/debian-12/versions/1.0/sbom")
        assert got.status_code == 200 and got.content == SBOM.encode()
        assert web.get("/api/v1/appliances/debian-12/versions/1.0").json()["links"]["sbom"].endswith("/1.0/sbom")
        assert MIRROR in web.get("/appliances/debian-12/1.0").text

    mia = HttpCatalogue(live_server.url, tokens["mia"])
    mia.store_audit("debian-12", "1.0", PASSING_AUDIT)
    mia.endorse("debian-12", "1.0", VO)
    signed = mia.image_list(VO)
    assert qcow2.uri.encode() in signed and b"oci://" not in signed

    # refused by the server (model_copy/model_construct skip the schema here, as a foreign client would):
    # a location list not starting with the image's uri; an SBOM that is not CycloneDX JSON
    with pytest.raises(InvalidPayload, match=r"locations\.0: must be the image's uri"):
        bad = qcow2.model_copy(update={"locations": [MIRROR, qcow2.uri]})
        alice.register_version(
            VersionPayload.model_construct(appliance="debian-12", version="2.0", notes="x", images=[bad])
        )
    with pytest.raises(InvalidPayload, match=r"sbom: .*must be a CycloneDX JSON SBOM"):
        alice.register_version(
            VersionPayload.model_construct(
                appliance="debian-12", version="2.0", notes="x", images=[qcow2], sbom='{"spdxVersion": "2.3"}'
            )
        )
    alice.close()
    mia.close()
