"""The recipe: one `invoke release` parses the appliance definition once and loads the build manifest
once (the stages hand each other what they returned), and every step's result reloads from disk."""

from __future__ import annotations

import dataclasses
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import pipeline.appliance
from pipeline.appliance import Appliance, find_appliance
from pipeline.builder import BuildResult
from pipeline.errors import ArtifactError
from pipeline.fsutil import hash_file
from pipeline.manifest import Artifact, BuildManifest
from pipeline.package import PackageResult, package_build
from pipeline.publish import plan_publish
from pipeline.recipe import RecipeStages, packaged, release_appliance
from pipeline.repository import open_repository
from pipeline.settings import Settings
from tests.publish.conftest import ROOT, make_settings
from tests.rebuild.conftest import manifest

VERSION = "2026.11.20"


def _count_calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Wrap the YAML parse and the manifest load with call-throughs that count (the real ones run)."""
    calls: Counter[str] = Counter()
    parse = pipeline.appliance.load_appliance
    load = BuildManifest.load.__func__  # type: ignore[attr-defined]

    def counted_parse(directory: Path, provisioners_dir: Path | None = None) -> Appliance:
        calls[f"parse {directory.name}"] += 1
        return parse(directory, provisioners_dir)

    def counted_load(cls: type[BuildManifest], version_dir: Path) -> Any:
        calls[f"load {version_dir.parent.name} {version_dir.name}"] += 1
        return load(cls, version_dir)

    monkeypatch.setattr(pipeline.appliance, "load_appliance", counted_parse)
    monkeypatch.setattr(BuildManifest, "load", classmethod(counted_load))
    return calls


@pytest.mark.slow
@pytest.mark.build
def test_release_parses_the_definition_once_and_loads_the_manifest_once(
    reference_settings: Settings,
    reference_build: tuple[Path, BuildManifest],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    version_dir, built = reference_build
    settings = dataclasses.replace(
        reference_settings,
        repository=(tmp_path / "repository").as_uri(),
        catalogue=f"sqlite:///{tmp_path / 'catalogue.db'}",
    )
    calls = _count_calls(monkeypatch)
    result = release_appliance(settings, "debian-12")
    assert result.publish.plan.version_dir == version_dir
    assert f"registered in the catalogue: http://127.0.0.1:8080/repo/debian-12/{built.version}/" in result.summary()
    assert calls == Counter({"parse debian-12": 1, f"load debian-12 {built.version}": 1})


@pytest.fixture
def built(tmp_path: Path) -> tuple[Settings, Appliance, BuildManifest]:
    """A built version on disk: a real (small, empty) qcow2 as the build disk and a valid manifest."""
    settings = make_settings(tmp_path, (tmp_path / "repository").as_uri())
    definition = find_appliance(ROOT / "packer_templates", "debian-12", ROOT / "provisioners")
    version_dir = settings.version_dir("debian-12", VERSION)
    disk = version_dir / "build" / f"debian-12-{VERSION}.qcow2"
    disk.parent.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    artifact = Artifact.from_digests(disk.relative_to(version_dir).as_posix(), "build-disk", "qcow2", hash_file(disk))
    m = dataclasses.replace(manifest("debian-12", VERSION, packages=(("bash", "5.2.15-2+b7"),)), artifacts=(artifact,))
    m.save(version_dir)
    return settings, definition, m


def test_build_and_package_results_reload_from_disk(built: tuple[Settings, Appliance, BuildManifest]) -> None:
    settings, definition, m = built
    loaded = BuildResult.load(settings, definition, VERSION)
    assert (loaded.version, loaded.manifest, loaded.definition) == (VERSION, m, definition)
    assert loaded.disk.is_file() and not packaged(loaded.version_dir, loaded.manifest)

    made = package_build(loaded)
    assert made.manifest is not None and made.manifest_path == loaded.version_dir / "manifest.json"
    assert {a.role for a in made.artifacts} == {"ova", "qcow2", "sbom", "sha256sums", "sha512sums"}
    assert packaged(made.out_dir, made.manifest)

    again = PackageResult.load(settings, definition)  # the newest version, as `invoke publish` finds it
    assert (again.version, again.out_dir, again.manifest, again.definition) == (
        VERSION,
        made.out_dir,
        made.manifest,
        definition,
    )
    assert sorted(again.artifacts, key=lambda a: a.name) == sorted(made.artifacts, key=lambda a: a.name)
    assert again.summary() == f"debian-12 {VERSION} is already packaged in {made.out_dir}"
    repository = open_repository(settings)
    assert plan_publish(again, repository) == plan_publish(made, repository)  # publish needs nothing more

    # the recipe's package step finds the package complete and makes nothing again
    reused = RecipeStages(settings).package(BuildResult.load(settings, definition, VERSION))
    assert reused.reused and reused.manifest == made.manifest


def test_a_disk_package_cannot_be_published(built: tuple[Settings, Appliance, BuildManifest]) -> None:
    settings, definition, m = built
    made = PackageResult.of_build(definition, settings.version_dir("debian-12", VERSION), m)
    loose = dataclasses.replace(made, manifest=None)  # what `invoke package --disk` returns
    with pytest.raises(ArtifactError, match="not a built version"):
        plan_publish(loose, open_repository(settings))
