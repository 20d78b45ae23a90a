"""The catalogue as the record of what was built: read back in-process and over HTTP, identically."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.catalogue.contract import AppliancePayload, Catalogue
from pipeline.catalogue.http_client import HttpCatalogue
from pipeline.catalogue.inprocess import InProcessCatalogue
from pipeline.catalogue.settings import CatalogueSettings
from pipeline.manifest import BaseRef
from tests.rebuild.conftest import manifest
from tests.rebuild.served import payload_of, served_catalogue

BASE_SOURCES = ("deb http://deb.debian.org/debian bookworm main",)


def _publish(catalogue: Catalogue) -> None:
    for name in ("debian-12", "science"):
        catalogue.ensure_appliance(AppliancePayload(name=name, title=name, description=f"{name} appliance"))
    for version, digest in (("2026.11.01", "1" * 64), ("2026.11.20", "2" * 64), ("2026.11.3", "3" * 64)):
        m = manifest("debian-12", version, inputs_digest=digest, packages=(("bash", "5.2"),), sources=BASE_SOURCES)
        catalogue.register_version(payload_of(m, f"https://b.example.org/debian-12/{version}/d.qcow2"))
    science = manifest(
        "science",
        "2026.11.21",
        inputs_digest="4" * 64,
        base=BaseRef("appliance", "debian-12@2026.11.20", "sha256:" + "5" * 64, BASE_SOURCES),
    )
    catalogue.register_version(payload_of(science, "https://b.example.org/science/2026.11.21/s.qcow2"))


@pytest.mark.parametrize("over", ["in-process", "http"])
def test_build_record_reads_back_manifest_packages_digest_and_base(over: str, tmp_path: Path) -> None:
    with served_catalogue(tmp_path / "c.db", None, repository_public_url="https://b.example.org") as served:
        local = InProcessCatalogue(CatalogueSettings(served.database_url, served.url, None, "https://b.example.org"))
        catalogue: Catalogue = local if over == "in-process" else HttpCatalogue(served.url, served.token)
        try:
            _publish(catalogue)
            newest = catalogue.build_record("debian-12")
            # version order, not registration order or string order: 2026.11.20 > 2026.11.3
            assert newest is not None and newest.version == "2026.11.20"
            assert newest.inputs_digest == "2" * 64 and newest.base_version is None
            assert [(p.name, p.version, p.arch) for p in newest.packages] == [("bash", "5.2", "amd64")]
            assert newest.manifest["base"]["sources"] == list(BASE_SOURCES)
            assert [i.uri for i in newest.images] == ["https://b.example.org/debian-12/2026.11.20/d.qcow2"]
            old = catalogue.build_record("debian-12", "2026.11.01")
            assert old is not None and old.inputs_digest == "1" * 64
            science = catalogue.build_record("science")
            assert science is not None and science.base_version == "2026.11.20"
            assert catalogue.build_record("science", "1999.01.01") is None
            assert catalogue.build_record("never-registered") is None
            catalogue.archive_version("debian-12", "2026.11.20")  # archived versions are not "the newest"
            after = catalogue.build_record("debian-12")
            assert after is not None and after.version == "2026.11.3"
        finally:
            catalogue.close()
            local.close()
