"""Audits gate endorsements; endorsing, revoking, archival and expiry each publish a new signed list.

Lists are signed with a real throwaway CA (``pipeline.endorse.pki``) and checked as a site does
(``pipeline.site.verify``, which runs ``openssl smime -verify``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from pipeline.catalogue.contract import ImageListInfo, InvalidPayload, NotEndorsable, NotFound, VersionPayload
from pipeline.catalogue.inprocess import InProcessCatalogue
from pipeline.catalogue.settings import CatalogueSettings
from pipeline.site.verify import verify_image_list
from tests.catalogue.conftest import APPLIANCE, FAILING_AUDIT, PASSING_AUDIT, WAIVED_AUDIT

VO = "vo.example.org"


@pytest.fixture
def cat(signing_settings: CatalogueSettings) -> Iterator[InProcessCatalogue]:
    c = InProcessCatalogue(signing_settings)
    c.ensure_appliance(APPLIANCE)
    yield c
    c.close()


def _verified(cat: InProcessCatalogue, dev_ca: Path, tmp_path: Path) -> dict[str, object]:
    """The served list, verified like a site would; returns its JSON body."""
    signed = cat.image_list(VO)
    path = tmp_path / f"image-{datetime.now(UTC).timestamp()}.list"
    path.write_bytes(signed)
    report = verify_image_list(path, dev_ca / "ca.pem")
    body = signed.split(b"\n\n", 1)[1] if b"\n\n" in signed else signed
    start, end = body.index(b"{"), body.rindex(b"}") + 1
    doc: dict[str, object] = json.loads(body[start:end].decode())["hv:imagelist"]
    assert doc["hv:version"] == report.version
    return doc


def _sql(cat: InProcessCatalogue, statement: str, **params: object) -> None:
    engine = create_engine(cat.settings.database_url)
    with engine.begin() as conn:
        conn.execute(text(statement), params)
    engine.dispose()


def test_endorsement_needs_a_passing_audit(
    cat: InProcessCatalogue, version_payload: Callable[..., VersionPayload]
) -> None:
    cat.register_version(version_payload())
    with pytest.raises(NotEndorsable, match=f"no policy audit stored by an admin or a manager of VO {VO}"):
        cat.endorse("debian-12", "2026.11.22", VO)
    cat.store_audit("debian-12", "2026.11.22", FAILING_AUDIT)
    with pytest.raises(NotEndorsable, match="fails the policy audit: ssh-host-keys"):
        cat.endorse("debian-12", "2026.11.22", VO)
    cat.store_audit("debian-12", "2026.11.22", WAIVED_AUDIT)  # failures with waivers are accepted
    info = cat.endorse("debian-12", "2026.11.22", VO)
    assert info.entries == 2 and info.url.endswith(f"/vo/{VO}/image.list")
    with pytest.raises(InvalidPayload, match="checks"):
        cat.store_audit("debian-12", "2026.11.22", {"checks": []})
    with pytest.raises(InvalidPayload, match="needs a reason"):
        cat.store_audit("debian-12", "2026.11.22", {"checks": [{"id": "x", "result": "waived", "evidence": ""}]})


def test_lifecycle_publishes_increasing_signed_lists(
    cat: InProcessCatalogue, version_payload: Callable[..., VersionPayload], dev_ca: Path, tmp_path: Path
) -> None:
    for v in ("1.0", "2.0"):
        cat.register_version(version_payload(version=v))
        cat.store_audit("debian-12", v, PASSING_AUDIT)
    infos: list[ImageListInfo] = [cat.endorse("debian-12", "1.0", VO)]
    doc = _verified(cat, dev_ca, tmp_path)
    images = [i["hv:image"] for i in doc["hv:images"]]  # type: ignore[attr-defined]
    assert {i["hv:version"] for i in images} == {"1.0"} and {i["hv:format"] for i in images} == {"OVA", "QCOW2"}
    first_ids = {i["dc:identifier"] for i in images}
    registered = cat.get_version("debian-12", "1.0")
    assert registered is not None
    assert {i["sl:checksum:sha512"] for i in images} == {i.sha512 for i in registered.images}

    # a newer endorsed version replaces the older one (same dc:identifier, higher hv:version)
    infos.append(cat.endorse("debian-12", "2.0", VO))
    doc = _verified(cat, dev_ca, tmp_path)
    images = [i["hv:image"] for i in doc["hv:images"]]  # type: ignore[attr-defined]
    assert {i["hv:version"] for i in images} == {"2.0"} and {i["dc:identifier"] for i in images} == first_ids

    # endorsing again changes nothing
    assert cat.endorse("debian-12", "2.0", VO) == infos[-1]

    infos.append(cat.revoke("debian-12", "2.0", VO))  # back to 1.0
    images = [i["hv:image"] for i in _verified(cat, dev_ca, tmp_path)["hv:images"]]  # type: ignore[index]
    assert {i["hv:version"] for i in images} == {"1.0"}

    cat.archive_version("debian-12", "1.0")  # archival drops it: an empty list, still signed
    doc = _verified(cat, dev_ca, tmp_path)
    assert doc["hv:images"] == []
    versions = [i.hv_version for i in infos] + [int(str(doc["hv:version"]))]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    with pytest.raises(NotEndorsable, match="archived"):
        cat.endorse("debian-12", "1.0", VO)
    with pytest.raises(NotFound, match="not endorsed"):
        cat.revoke("debian-12", "2.0", VO)


def test_expiry_and_resigning_publish_new_lists(
    cat: InProcessCatalogue, version_payload: Callable[..., VersionPayload], dev_ca: Path, tmp_path: Path
) -> None:
    cat.register_version(version_payload(version="1.0"))
    cat.store_audit("debian-12", "1.0", PASSING_AUDIT)
    endorsed = cat.endorse("debian-12", "1.0", VO)
    before = _verified(cat, dev_ca, tmp_path)
    assert before["hv:version"] == str(endorsed.hv_version)
    assert cat.image_list(VO) == cat.image_list(VO)  # nothing due: the same signed bytes are served

    # the list is due for re-signing (less than the margin left): same content, new version and expiry
    _sql(
        cat,
        "UPDATE image_list_versions SET refresh_after = :t",
        t=datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=1),
    )
    resigned = _verified(cat, dev_ca, tmp_path)
    assert int(str(resigned["hv:version"])) > endorsed.hv_version
    assert resigned["hv:images"] == before["hv:images"]

    # the endorsed version expires: the next request serves a list without it
    past = (datetime.now(UTC) - timedelta(minutes=1)).replace(tzinfo=None)
    _sql(cat, "UPDATE versions SET expires = :t", t=past)
    _sql(cat, "UPDATE image_list_versions SET refresh_after = :t", t=past)
    expired = _verified(cat, dev_ca, tmp_path)
    assert expired["hv:images"] == [] and int(str(expired["hv:version"])) > int(str(resigned["hv:version"]))
    with pytest.raises(NotEndorsable, match="expired"):
        cat.endorse("debian-12", "1.0", VO)


def test_without_a_signing_identity_endorsement_is_refused(
    cat_settings: CatalogueSettings, version_payload: Callable[..., VersionPayload]
) -> None:
    cat = InProcessCatalogue(cat_settings)
    cat.ensure_appliance(APPLIANCE)
    cat.register_version(version_payload())
    cat.store_audit("debian-12", "2026.11.22", PASSING_AUDIT)
    with pytest.raises(NotEndorsable, match="no signing identity") as e:
        cat.endorse("debian-12", "2026.11.22", VO)
    assert "VMI_SIGNING_KEY" in str(e.value)
    got = cat.get_version("debian-12", "2026.11.22")
    assert got is not None and got.endorsements == []  # rolled back with the list
    cat.close()
