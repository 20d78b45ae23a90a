"""Resuming from disk after publish: the rebuild's recipe (build resumed from the version on disk, then
real packaging, audit and publish to a served file repository and the in-process catalogue) stops after
publish; `invoke endorse` later resumes from the publish receipt, and its own receipt reloads."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.appliance import Appliance, find_appliance
from pipeline.builder import BuildResult
from pipeline.catalogue.client import open_catalogue
from pipeline.endorse import EndorseResult, endorse_version, endorsed_path
from pipeline.endorse.pki import DevCa
from pipeline.errors import ReceiptError
from pipeline.publish import PUBLISHED_FILE, PublishResult
from pipeline.rebuild.stages import PipelineStages
from pipeline.recipe import RecipeResult, run_recipe
from pipeline.settings import Settings
from tests.endorse.conftest import serve_folder
from tests.endorse.disks import good_rootfs
from tests.endorse.test_audit_version import built_version, project

VO = "vo.example.org"
VERSION = "2026.11.22"


class ResumedStages(PipelineStages):
    """The rebuild's stages, whose build step resumes from the version built on disk (no Packer here)."""

    def build(self, appliance: Appliance, version: str | None = None) -> BuildResult:
        return BuildResult.load(self.settings, appliance, version)


@pytest.fixture
def rebuilding(tmp_path: Path, mirror: str, dev_ca: DevCa, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """A project whose file repository is served on 127.0.0.1, a built version on disk, a signing key."""
    monkeypatch.setenv("VMI_SIGNING_KEY", str(dev_ca.endorser_key))
    monkeypatch.setenv("VMI_SIGNING_CERT", str(dev_ca.endorser_cert))
    root = tmp_path / "project" / "repository"
    root.mkdir(parents=True)
    with serve_folder(root) as url:
        settings = project(tmp_path, mirror, repository_public_url=url)
        built_version(settings, good_rootfs(tmp_path / "rootfs"), VERSION)
        yield settings


def publish_by_recipe(settings: Settings) -> RecipeResult:
    """The rebuild's recipe with its audit, up to publish (no VO to endorse for: it stops there)."""
    appliance = find_appliance(settings.templates_dir, "debian-12", settings.provisioners_dir)
    return run_recipe(appliance, ResumedStages(settings), version=VERSION, audit=True)


def test_endorse_resumes_from_the_publish_receipt(rebuilding: Settings) -> None:
    settings = rebuilding
    cooked = publish_by_recipe(settings)
    assert cooked.audit is not None and cooked.audit.passed and cooked.endorsed == ()
    definition = cooked.built.definition
    assert PublishResult.load(settings, definition, VERSION) == cooked.published
    catalogue = open_catalogue(settings)
    try:
        info = catalogue.get_version("debian-12", VERSION)
    finally:
        catalogue.close()
    assert info is not None and info.audit_passed is True  # stored by the publish step
    with pytest.raises(ReceiptError, match=f"{VERSION} was never endorsed for {VO} here"):
        EndorseResult.load(settings, "debian-12", VERSION, VO)

    endorsed = endorse_version(settings, "debian-12", VERSION, VO)  # `invoke endorse`, later
    assert f"endorsed debian-12 {VERSION} for {VO}" in endorsed.summary()
    assert EndorseResult.load(settings, "debian-12", VERSION, VO) == endorsed
    revoked = endorse_version(settings, "debian-12", VERSION, VO, revoke=True)
    assert EndorseResult.load(settings, "debian-12", VERSION, VO) == revoked and revoked.revoked


def test_endorse_refuses_a_local_build_its_receipt_does_not_match(rebuilding: Settings) -> None:
    """The receipt proves the disk audited here is the one registered; one that no longer matches stops
    endorse before anything is audited or signed."""
    settings = rebuilding
    publish_by_recipe(settings)
    receipt = settings.version_dir("debian-12", VERSION) / PUBLISHED_FILE
    data = json.loads(receipt.read_text())
    data["registered"]["images"][0]["sha512"] = "0" * 128
    receipt.write_text(json.dumps(data))
    with pytest.raises(ReceiptError, match="records images that are not this package's"):
        endorse_version(settings, "debian-12", VERSION, VO)
    assert not endorsed_path(settings.version_dir("debian-12", VERSION), VO).exists()


def test_a_damaged_endorse_receipt_fails_in_one_line_naming_it(rebuilding: Settings) -> None:
    settings = rebuilding
    publish_by_recipe(settings)
    endorse_version(settings, "debian-12", VERSION, VO)
    path = endorsed_path(settings.version_dir("debian-12", VERSION), VO)
    data = json.loads(path.read_text())
    data["result"]["image_list"]["hv_version"] = "two"
    path.write_text(json.dumps(data))
    with pytest.raises(ReceiptError) as failed:
        EndorseResult.load(settings, "debian-12", VERSION, VO)
    assert failed.value.message == (
        f"{path}: damaged receipt (ValueError: EndorseResult.image_list.hv_version: Input should be a valid integer, "
        "unable to parse string as an integer)"
    )
