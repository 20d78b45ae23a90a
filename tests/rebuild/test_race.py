"""Two runners decide and publish the same appliance at once: one version results, and the loser
exits 0 saying "already built by another run" (issue 13). The catalogue is served over HTTP, the
repository is the catalogue's file repository, publish is the real one; only the Packer build is
replaced, by real files made with qemu-img (a real build is one Packer run at a time, ~20 minutes).
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline.appliance import Appliance
from pipeline.builder import BuildResult
from pipeline.catalogue.http_client import HttpCatalogue
from pipeline.fsutil import hash_file
from pipeline.manifest import Artifact
from pipeline.package import PackageResult
from pipeline.rebuild import rebuild_appliances
from pipeline.rebuild.execute import AuditOutcome, Outcome, RebuildReport
from pipeline.rebuild.stages import PipelineStages
from pipeline.settings import Settings
from tests.rebuild.conftest import make_settings, manifest
from tests.rebuild.served import served_catalogue

NOW = datetime(2026, 12, 2, 6, tzinfo=UTC)


class PackagedByQemuImg(PipelineStages):
    """The real stages, except that "build + package" writes a packaged version made with qemu-img
    (each runner's bytes differ, as two real builds' do) and waits until both runners have built."""

    def __init__(self, settings: Settings, both_built: threading.Barrier, size: str) -> None:
        super().__init__(settings)
        self.both_built = both_built
        self.size = size

    def build(self, definition: Appliance, version: str | None = None) -> BuildResult:
        assert version is not None  # named when the run decided
        appliance = definition.name
        out = self.settings.version_dir(appliance, version)
        out.mkdir(parents=True)
        qcow2 = out / f"{appliance}-{version}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), self.size], check=True)
        ova = out / f"{appliance}-{version}.ova"
        shutil.copyfile(qcow2, ova)
        (out / "build").mkdir()
        disk = out / "build" / qcow2.name
        shutil.copyfile(qcow2, disk)
        files = [(qcow2, "qcow2", "qcow2"), (ova, "ova", "ova"), (disk, "build-disk", "qcow2")]
        for algo in ("sha256", "sha512"):
            sums = out / f"{algo.upper()}SUMS"
            sums.write_text("".join(f"{getattr(hash_file(p), algo)}  {p.name}\n" for p, _, _ in files[:2]))
            files.append((sums, f"{algo}sums", "text"))
        artifacts = tuple(
            Artifact.from_digests(p.relative_to(out).as_posix(), role, fmt, hash_file(p)) for p, role, fmt in files
        )
        m = dataclasses.replace(manifest(appliance, version, created="2026-12-02T06:00:00Z"), artifacts=artifacts)
        (out / "manifest.json").write_text(m.to_json())
        self.both_built.wait(60)
        return BuildResult.load(self.settings, definition, version)

    def package(self, built: BuildResult) -> PackageResult:
        return PackageResult.of_build(built.definition, built.version_dir, built.manifest)  # packaged by build

    def audit(self, packaged: PackageResult) -> AuditOutcome:
        return AuditOutcome(True, "not audited here")


def _runner(root: Path, catalogue: str, repository: Path) -> Settings:
    """A fresh clone: the debian-12 definition, empty output/ and .cache/."""
    (root / "packer_templates").mkdir(parents=True)
    here = Path(__file__).resolve().parents[2]
    shutil.copytree(here / "packer_templates" / "debian-12", root / "packer_templates" / "debian-12")
    shutil.copytree(here / "packer_templates" / "_shared", root / "packer_templates" / "_shared")
    shutil.copytree(here / "provisioners", root / "provisioners")
    definition = root / "packer_templates" / "debian-12" / "appliance.yaml"
    text = definition.read_text()
    assert "auto_endorse: true" in text  # endorsing needs the real audit of a real disk: not here
    definition.write_text(text.replace("auto_endorse: true", "auto_endorse: false"))
    return dataclasses.replace(
        make_settings(root), catalogue=catalogue, repository=repository.as_uri(),
        repository_public_url=f"{catalogue}/repo",
    )  # fmt: skip


def test_two_runners_racing_end_with_one_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repository = tmp_path / "repo"
    with served_catalogue(tmp_path / "c.db", repository) as served:
        monkeypatch.setenv("VMI_CATALOGUE_TOKEN", served.token)
        both_built = threading.Barrier(2)
        reports: dict[str, RebuildReport] = {}
        errors: list[BaseException] = []

        def run(name: str, size: str) -> None:
            settings = _runner(tmp_path / name, served.url, repository)
            try:
                stages = PackagedByQemuImg(settings, both_built, size)
                reports[name] = rebuild_appliances(settings, ["debian-12"], stages=stages, now=NOW)
            except BaseException as e:  # noqa: BLE001 -- reported by the assertion below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(n, s)) for n, s in (("a", "64M"), ("b", "96M"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not errors, errors
        catalogue = HttpCatalogue(served.url, None)
        try:
            versions = [v.version for v in catalogue.list_versions("debian-12")]
        finally:
            catalogue.close()

    assert versions == ["2026.12.02"]  # one version, not two same-day versions
    assert sorted(str(r.result("debian-12").outcome) for r in reports.values()) == ["already-built", "published"]
    loser = next(r for r in reports.values() if r.result("debian-12").outcome is Outcome.ALREADY_BUILT)
    winner = next(r for r in reports.values() if r.result("debian-12").outcome is Outcome.PUBLISHED)
    assert loser.ok and winner.ok  # both exit 0
    assert loser.result("debian-12").detail.startswith("already built by another run: debian-12 2026.12.02 ")
    assert "already-built" in loser.summary() and loser.summary().splitlines()[-1] == "ok: 1 already-built"
    # what is in the repository is the winner's, whole
    winner_dir = next(tmp_path / n for n, r in reports.items() if r.result("debian-12").outcome is Outcome.PUBLISHED)
    qcow2 = "debian-12-2026.12.02.qcow2"
    assert (repository / "debian-12" / "2026.12.02" / qcow2).read_bytes() == (
        winner_dir / "output" / "debian-12" / "2026.12.02" / qcow2
    ).read_bytes()
