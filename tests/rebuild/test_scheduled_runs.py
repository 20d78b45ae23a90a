"""Scheduled rebuilds on fresh CI runners (issue 13), end to end with real builds.

The catalogue is served over HTTP, the repository is S3 (moto's server on loopback), and every run
is a fresh clone with an empty ``output/`` and ``.cache/``:
1. the baseline (debian-12: the session's real reference build, reused to save a 5-minute build) and
   a layered appliance (a real build) are published;
2. nothing changed: nothing is rebuilt or published;
3. the layered appliance's provisioner changed: only it is rebuilt, on a runner that never saw the
   base disk (fetched from S3, verified against the catalogue's sha512).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from pathlib import Path

import pytest

from pipeline.appliance import Appliance
from pipeline.builder import BuildResult
from pipeline.catalogue.http_client import HttpCatalogue
from pipeline.endorse.pki import make_dev_ca
from pipeline.manifest import BuildManifest, find_version
from pipeline.package import PackageResult
from pipeline.rebuild import rebuild_appliances
from pipeline.rebuild.decide import Reason
from pipeline.rebuild.execute import Outcome, RebuildReport
from pipeline.rebuild.scaffold import scaffold_appliance
from pipeline.rebuild.stages import PipelineStages
from pipeline.repository import open_repository
from pipeline.settings import Settings
from tests.publish.conftest import S3_ENV, _s3_credentials, bucket, moto_endpoint, s3  # noqa: F401 -- fixtures
from tests.rebuild.conftest import ROOT, make_settings
from tests.rebuild.served import Served, served_catalogue

VO = "vo.example.org"


class ReferenceBaseline(PipelineStages):
    """The real stages, except that building debian-12 takes the session's reference build (already
    packaged) instead of building it again; everything after (audit, publish, endorse) is real."""

    def __init__(self, settings: Settings, reference: Path, version: str) -> None:
        super().__init__(settings)
        self.reference, self.version = reference, version

    def build(self, appliance: Appliance, version: str | None = None) -> BuildResult:
        if appliance.name != "debian-12":
            return super().build(appliance, version)
        target = self.settings.version_dir(appliance.name, self.version)
        shutil.copytree(self.reference, target, copy_function=os.link)
        return BuildResult.load(self.settings, appliance, self.version)

    def package(self, built: BuildResult) -> PackageResult:
        if built.appliance != "debian-12":
            return super().package(built)
        return PackageResult.of_build(built.definition, built.version_dir, built.manifest)


@pytest.mark.slow
@pytest.mark.build
def test_two_scheduled_runs_on_fresh_runners(
    reference_build: tuple[Path, BuildManifest],
    short_work: Path,
    tmp_path: Path,
    moto_endpoint: str,  # noqa: F811
    bucket: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ref_dir, ref = reference_build
    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, v)
    # the git repository: debian-12 as in this checkout, and a community appliance layered on it
    origin = make_settings(tmp_path / "origin")
    (origin.templates_dir).mkdir(parents=True)
    shutil.copytree(ROOT / "packer_templates" / "debian-12", origin.templates_dir / "debian-12")
    shutil.copytree(ROOT / "packer_templates" / "_shared", origin.templates_dir / "_shared")
    shutil.copytree(ROOT / "provisioners", origin.provisioners_dir)
    scaffold_appliance(origin, "science", "debian-12")
    ca = make_dev_ca(tmp_path / "ca")
    signing = (ca.endorser_key, ca.endorser_cert)
    public = f"https://{bucket}.s3.example.org/vmi"
    with served_catalogue(tmp_path / "c.db", None, signing, (VO,), repository_public_url=public) as served:
        monkeypatch.setenv("VMI_CATALOGUE_TOKEN", served.token)
        counter = iter("abc")

        def fresh_runner() -> Settings:
            name = next(counter)
            root = short_work / name
            shutil.copytree(origin.templates_dir, root / "packer_templates")
            shutil.copytree(origin.provisioners_dir, root / "provisioners")
            return dataclasses.replace(
                make_settings(root, short_work / f"w{name}"), catalogue=served.url, catalogue_public_url=served.url,
                repository=f"s3://{bucket}/vmi", repository_public_url=public,
                s3_endpoint_url=moto_endpoint,
            )  # fmt: skip

        def run(settings: Settings, stages: PipelineStages | None = None) -> RebuildReport:
            assert not settings.output_dir.exists() and not settings.cache_dir.exists()  # a fresh runner
            report = rebuild_appliances(settings, None, stages=stages)
            sys.stderr.write(report.summary() + "\n")  # shown with -s: what the CI log shows
            return report

        # run 1: the baseline and the layered appliance are built and published
        first = fresh_runner()
        one = run(first, ReferenceBaseline(first, ref_dir, ref.version))
        assert one.ok, one.summary()
        assert one.result("debian-12").decision.reasons == [Reason.NEVER_BUILT]
        assert one.result("debian-12").outcome is Outcome.ENDORSED, one.result("debian-12").detail
        science_1 = one.result("science")
        assert science_1.decision.reasons == [Reason.BASE_REBUILDING] or science_1.decision.reasons == [
            Reason.NEVER_BUILT
        ]
        assert science_1.outcome is Outcome.PUBLISHED, science_1.detail
        published = _state(served, first)

        # run 2, nothing changed: nothing rebuilt, nothing published
        second = fresh_runner()
        two = run(second)
        assert [(r.decision.appliance, r.outcome) for r in two.results] == [
            ("debian-12", Outcome.SKIPPED),
            ("science", Outcome.SKIPPED),
        ], two.summary()
        assert two.ok and _state(served, second) == published
        assert not any(second.output_dir.glob("*/*/manifest.json"))

        # run 3: the layered appliance's provisioner changed; only it is rebuilt, its base fetched
        script = origin.templates_dir / "science" / "science.sh"
        script.write_text(script.read_text() + "echo 'numpy would go here' > /etc/science/extra\n")
        third = fresh_runner()
        three = run(third)
        assert three.ok, three.summary()
        assert three.result("debian-12").outcome is Outcome.SKIPPED
        science_3 = three.result("science")
        assert science_3.decision.reasons == [Reason.INPUTS_CHANGED] and "(provisioner:science.sh)" in (
            science_3.decision.why()
        )
        assert science_3.outcome is Outcome.PUBLISHED and science_3.version not in (None, science_1.version)
        assert not (third.output_dir / "debian-12").exists()  # this runner never had the base's disk
        _, built = find_version(third.output_dir, "science")
        assert built.base.ref == f"debian-12@{ref.version}"
        qcow2 = find_version(first.output_dir, "debian-12")[1].artifact("qcow2").sha512  # as run 1 packaged it
        assert (third.cache_dir / "images" / f"sha512-{qcow2}.qcow2").is_file()  # fetched, verified, cached
        after = _state(served, third)
        assert after["debian-12"] == published["debian-12"]
        assert after["science"] == sorted([*published["science"], science_3.version])


def _state(served: Served, settings: Settings) -> dict[str, list[str]]:
    """Versions in the catalogue and keys in the repository, per appliance."""
    catalogue = HttpCatalogue(served.url, None)
    try:
        versions = {a: sorted(v.version for v in catalogue.list_versions(a)) for a in ("debian-12", "science")}
    finally:
        catalogue.close()
    keys = sorted(o.key for o in open_repository(settings).iter_objects())
    return {**versions, "keys": keys}
