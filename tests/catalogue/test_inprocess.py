"""The in-process catalogue (what publish/endorse/rebuild use), on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.catalogue.client import open_catalogue
from pipeline.catalogue.contract import (
    ImagePayload,
    Integrity,
    InvalidPayload,
    NotFound,
    VersionConflict,
    VersionPayload,
)
from pipeline.catalogue.inprocess import InProcessCatalogue
from pipeline.catalogue.settings import CatalogueSettings
from pipeline.settings import load_settings
from tests.catalogue.conftest import APPLIANCE, PUBLIC


@pytest.fixture
def catalogue(cat_settings: CatalogueSettings) -> Iterator[InProcessCatalogue]:
    cat = InProcessCatalogue(cat_settings)
    cat.ensure_appliance(APPLIANCE)
    yield cat
    cat.close()


def test_register_is_idempotent_and_immutable(
    catalogue: InProcessCatalogue, version_payload: Callable[..., VersionPayload]
) -> None:
    payload = version_payload()
    first = catalogue.register_version(payload)
    assert [i.format for i in first.images] == ["ova", "qcow2"]
    assert all(i.integrity is Integrity.VERIFIED for i in first.images)  # the server hashed the files
    assert catalogue.register_version(payload) == first
    with pytest.raises(VersionConflict, match="different content"):
        catalogue.register_version(payload.model_copy(update={"notes": "changed notes"}))
    assert [v.version for v in catalogue.list_versions("debian-12")] == ["2026.11.22"]
    assert len(catalogue.list_images()) == 2
    got = catalogue.get_version("debian-12", "2026.11.22")
    assert got is not None and got.identifier == first.identifier
    assert catalogue.get_version("debian-12", "1999.01.01") is None


def test_expiry_defaults_and_is_capped_at_one_year(
    catalogue: InProcessCatalogue, version_payload: Callable[..., VersionPayload]
) -> None:
    now = datetime.now(UTC)
    default = catalogue.register_version(version_payload(version="1"))
    assert timedelta(days=364) < default.expires - now <= timedelta(days=366)
    far = version_payload(version="2").model_copy(update={"expires": now + timedelta(days=5000)})
    assert catalogue.register_version(far).expires - now <= timedelta(days=366)
    near = version_payload(version="3").model_copy(update={"expires": now + timedelta(days=30)})
    assert abs(catalogue.register_version(near).expires - (now + timedelta(days=30))) < timedelta(seconds=5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.model_copy(update={"images": []}), "images: List should have at least 1 item"),
        (lambda p: p.model_copy(update={"images": [p.images[0], p.images[0]]}), "appears twice"),
        (
            lambda p: p.model_copy(update={"images": [p.images[0].model_copy(update={"size": 0})]}),
            "images.0.size: Input should be greater than 0",
        ),
        (
            lambda p: p.model_copy(update={"images": [p.images[0].model_copy(update={"sha512": ""})]}),
            r"images.0.sha512: must match \^\[0-9a-f\]\{128\}\$",
        ),
        (
            lambda p: p.model_copy(update={"images": [p.images[0].model_copy(update={"sha256": "ABC"})]}),
            r"images.0.sha256: must match \^\[0-9a-f\]\{64\}\$",
        ),
        (lambda p: p.model_copy(update={"version": ""}), r"debian-12 : version: must match \^\[A-Za-z0-9\]"),
        (lambda p: p.model_copy(update={"version": "x" * 21}), r"version: must match .*\{0,19\}"),
        (lambda p: p.model_copy(update={"notes": ""}), "notes: String should have at least 1 character"),
        (
            lambda p: p.model_copy(update={"images": [p.images[0].model_copy(update={"format": "exe"})]}),
            "images.0.format: Input should be 'ova', 'qcow2'",
        ),
        (
            lambda p: p.model_copy(update={"images": [p.images[0].model_copy(update={"uri": "ftp://x/y"})]}),
            "images.0.uri: must be an http:// or https:// URL",
        ),
        (
            lambda p: p.model_copy(
                update={"images": [p.images[0].model_copy(update={"min_cores": 4, "recommended_cores": 2})]}
            ),
            "images.0: min_cores must not exceed recommended_cores",
        ),
        (
            lambda p: p.model_copy(update={"expires": datetime(2000, 1, 1, tzinfo=UTC)}),
            "expires: must be in the future",
        ),
        # the server re-hashes repository files: a payload that lies about them is refused
        (
            lambda p: p.model_copy(update={"images": [p.images[0].model_copy(update={"size": p.images[0].size + 1})]}),
            "size",
        ),
        (lambda p: p.model_copy(update={"images": [p.images[0].model_copy(update={"sha512": "0" * 128})]}), "sha512"),
        (
            lambda p: p.model_copy(
                update={"images": [p.images[0].model_copy(update={"uri": f"{PUBLIC}/repo/nope.ova"})]}
            ),
            "not in the repository",
        ),
        (
            lambda p: p.model_copy(update={"images": [p.images[0].model_copy(update={"uri": "file:///etc/passwd"})]}),
            r"images.0.uri: file:///etc/passwd is not under the repository's public URL http://127.0.0.1:8080/repo/",
        ),
        (
            lambda p: p.model_copy(
                update={"images": [p.images[0].model_copy(update={"uri": f"{PUBLIC}/repo/../../etc/passwd"})]}
            ),
            "images.0.uri: must not have . or .. path segments",
        ),
    ],
)
def test_validation_names_the_field(
    catalogue: InProcessCatalogue,
    version_payload: Callable[..., VersionPayload],
    change: Callable[[VersionPayload], VersionPayload],
    message: str,
) -> None:
    with pytest.raises(InvalidPayload, match=message):
        catalogue.register_version(change(version_payload()))
    assert catalogue.list_versions("debian-12") == []  # nothing half-registered


def test_remote_images_are_stored_unchecked(
    catalogue: InProcessCatalogue, publish_file: Callable[..., ImagePayload]
) -> None:
    # an S3 repository: the catalogue has no files to hash, the URL is under the public base
    settings = dataclasses.replace(
        catalogue.settings, repository_root=None, repository_public_url="https://objects.example.org/vmi"
    )
    s3 = InProcessCatalogue(settings)
    image = publish_file().model_copy(update={"uri": "https://objects.example.org/vmi/debian-12/7/x.qcow2"})
    try:
        info = s3.register_version(VersionPayload(appliance="debian-12", version="7", notes="from S3", images=(image,)))
    finally:
        s3.close()
    assert info.images[0].integrity is Integrity.UNCHECKED
    assert info.images[0].sha512 == image.sha512


def test_unknown_appliance_is_not_found(
    catalogue: InProcessCatalogue, version_payload: Callable[..., VersionPayload]
) -> None:
    with pytest.raises(NotFound, match="not in the catalogue"):
        catalogue.register_version(version_payload(appliance="nope"))


def test_concurrent_registrations_make_one_version(
    cat_settings: CatalogueSettings, catalogue: InProcessCatalogue, version_payload: Callable[..., VersionPayload]
) -> None:
    payload = version_payload()
    results: list[object] = []

    def publish() -> None:
        cat = InProcessCatalogue(cat_settings)
        for _ in range(3):  # a conflict from a lost race is retried, as publish does
            try:
                results.append(cat.register_version(payload).identifier)
                break
            except VersionConflict as e:
                if "concurrently" not in str(e):
                    results.append(e)
                    break
        cat.close()

    threads = [threading.Thread(target=publish) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and len(set(results)) == 1, results
    assert len(catalogue.list_versions("debian-12")) == 1


def test_open_catalogue_by_url(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "output_dir": "output",
            "work_dir": "work",
            "cache_dir": "cache",
            "repository": "file://./repository",
            "repository_public_url": f"{PUBLIC}/repo",
            "catalogue": "sqlite:///./c.db",
            "catalogue_public_url": PUBLIC,
            "accel": "tcg",
        },
        tmp_path,
        environ={},
    )
    cat = open_catalogue(settings)
    assert isinstance(cat, InProcessCatalogue)
    assert cat.list_images() == []
    assert (tmp_path / "c.db").is_file()
    cat.close()
