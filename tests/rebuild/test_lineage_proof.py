"""Issue 12's proof, lineage part: a layered appliance built on N is flagged outdated when N is revoked.

End to end through the real commands on a checkout with a layered appliance: versions registered in a
catalogue served over HTTP with their build manifests (so ``versions.base_ref`` records the lineage),
``invoke endorse --revoke --cascade`` run as a VO manager would, the version JSON a client reads, and
the decision table ``invoke rebuild --dry-run`` prints. No Packer build: the manifests are what a build
of the current definitions records.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from pipeline.appliance import load_all
from pipeline.catalogue.contract import AppliancePayload, Catalogue
from pipeline.catalogue.http_client import HttpCatalogue
from pipeline.endorse.pki import make_dev_ca
from pipeline.manifest import Artifact, BaseRef
from pipeline.rebuild.inputs import current_inputs
from pipeline.rebuild.scaffold import scaffold_appliance
from pipeline.settings import Settings
from pipeline.site.verify import verify_image_list
from tests.rebuild.conftest import manifest
from tests.rebuild.served import Served, payload_of, served_catalogue

ROOT = Path(__file__).resolve().parents[2]
VO = "vo.example.org"
PUBLIC = "https://b.example.org"
AUDIT = {"checks": [{"id": "root-locked", "result": "pass", "evidence": "/etc/shadow: root:!*"}]}


def _publish(settings: Settings, catalogue: Catalogue, name: str, version: str, on: str | None = None) -> None:
    """Register ``name`` ``version`` as a build of the current definitions records it (``on``: its base)."""
    apps = load_all(settings.templates_dir, settings.provisioners_dir)
    digest, components = current_inputs(settings)(apps[name])
    created = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    m = manifest(name, version, created=created, inputs_digest=digest)
    disk = Artifact(f"build/{name}-{version}.qcow2", "build-disk", "qcow2", 1, "2" * 64, "3" * 128)  # not on disk
    m = dataclasses.replace(m, inputs=dict(components), artifacts=(disk,))
    if on is not None:
        m = dataclasses.replace(m, base=BaseRef("appliance", on, "sha256:" + "1" * 64, ()))
    catalogue.ensure_appliance(AppliancePayload(name=name, title=name, description=f"{name} appliance", vos=(VO,)))
    catalogue.register_version(payload_of(m, f"{PUBLIC}/{name}/{version}/{name}.qcow2"))
    catalogue.store_audit(name, version, AUDIT)


def _invoke(settings: Settings, served: Served, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(ROOT),
        "HOME": str(settings.root),
        "VMI_OUTPUT_DIR": str(settings.output_dir),
        "VMI_CACHE_DIR": str(settings.cache_dir),
        "VMI_WORK_DIR": str(settings.work_dir),
        "VMI_REPOSITORY": f"file://{settings.root / 'repository'}",
        "VMI_REPOSITORY_PUBLIC_URL": PUBLIC,
        "VMI_CATALOGUE": served.url,
        "VMI_CATALOGUE_TOKEN": served.token,
    }
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=settings.root, env=env, capture_output=True,
                          text=True, check=False)  # fmt: skip


def _row(table: str, appliance: str) -> str:
    (row,) = [line for line in table.splitlines() if line.split(" ", 1)[0] == appliance]
    return row


def test_a_layered_appliance_on_n_is_flagged_outdated_when_n_is_revoked(
    project: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("tasks.py", "invoke.yaml"):  # this checkout's command line, run in the project
        shutil.copy(ROOT / name, project.root / name)
    scaffold_appliance(project, "science", "debian-12")
    today = datetime.now(UTC).date()
    n, s, n1 = (f"{today - timedelta(days=d):%Y.%m.%d}" for d in (3, 2, 1))
    ca = make_dev_ca(tmp_path / "ca")
    signing = (ca.endorser_key, ca.endorser_cert)
    with served_catalogue(tmp_path / "c.db", None, signing, (VO,), repository_public_url=PUBLIC) as served:
        monkeypatch.setenv("VMI_CATALOGUE_TOKEN", served.token)  # a layered build's inputs read its base from there
        project = dataclasses.replace(project, catalogue=served.url)
        catalogue = HttpCatalogue(served.url, served.token)
        try:
            _publish(project, catalogue, "debian-12", n)
            _publish(project, catalogue, "science", s, on=f"debian-12@{n}")
            catalogue.endorse("debian-12", n, VO)
            catalogue.endorse("science", s, VO)

            dry = _invoke(project, served, "rebuild", "--dry-run")
            assert dry.returncode == 0, dry.stderr
            assert _row(dry.stdout, "science").split()[1] == "skip"
            assert f"base debian-12@{n} is the newest" in _row(dry.stdout, "science")

            refused = _invoke(project, served, "endorse", "--appliance", "debian-12", "--version", n, "--vo", VO,
                              "--cascade")  # fmt: skip
            assert refused.returncode == 2
            assert refused.stderr.strip() == "error: --cascade goes with --revoke: endorsing never cascades"

            # the VO manager revokes N, and with --cascade what is layered on it
            revoked = _invoke(project, served, "endorse", "--appliance", "debian-12", "--version", n, "--vo", VO,
                              "--revoke", "--cascade")  # fmt: skip
            assert revoked.returncode == 0, revoked.stderr
            assert f"revoked debian-12 {n} for {VO}\nrevoked science {s} for {VO}\n" in revoked.stdout
            assert revoked.stdout.count(f"signed image list of {VO} version ") == 1
            listed = tmp_path / "image.list"
            listed.write_bytes(requests.get(f"{served.url}/vo/{VO}/image.list", timeout=30).content)
            assert verify_image_list(listed, ca.ca_cert).images == ()

            lineage = requests.get(f"{served.url}/api/v1/appliances/science/versions/{s}", timeout=30).json()["lineage"]
            assert lineage == {
                "base_appliance": "debian-12", "base_version": n, "outdated": True,
                "reason": f"debian-12 {n} is revoked ({VO})",
            }  # fmt: skip

            # nothing current to rebuild on yet: flagged, not rebuilt on the revoked base
            dry = _invoke(project, served, "rebuild", "--dry-run")
            assert dry.returncode == 0, dry.stderr
            row = _row(dry.stdout, "science")
            assert row.split()[1] == "skip"
            assert (
                f"no-current-base: {s} is outdated: debian-12 {n} is revoked ({VO}), and debian-12 has no current "
                "version to rebuild on: build one first (invoke rebuild --appliance debian-12)"
            ) in row

            # N+1 is published (the base's own rebuild): science is rebuilt on it
            _publish(project, catalogue, "debian-12", n1)
            dry = _invoke(project, served, "rebuild", "--dry-run")
            assert dry.returncode == 0, dry.stderr
            row = _row(dry.stdout, "science")
            assert row.split()[1:3] == ["rebuild", "planned"]
            assert f"base-outdated: {s} is outdated: debian-12 {n} is revoked ({VO}); rebuild on debian-12 {n1}" in row
            assert _row(dry.stdout, "debian-12").split()[1] == "skip"
        finally:
            catalogue.close()


def test_an_outdated_base_rebuilt_in_this_run_is_named_with_the_reason(project: Settings) -> None:
    """The decision itself, on a real appliance definition: when the base is rebuilt first in this run,
    the layered version is rebuilt after it and the row still says why it was outdated."""
    from pipeline.rebuild.decide import ApplianceState, Reason, decide

    scaffold_appliance(project, "science", "debian-12")
    science = load_all(project.templates_dir, project.provisioners_dir)["science"]
    built = dataclasses.replace(
        manifest("science", "2026.11.23", created="2026-11-23T10:00:00Z"),
        base=BaseRef("appliance", "debian-12@2026.11.22", "sha256:" + "1" * 64, ()),
    )
    revoked = "debian-12 2026.11.22 is revoked (vo.example.org)"
    now = datetime(2026, 11, 24, tzinfo=UTC)
    state = ApplianceState(science, built.inputs_digest, built, "2026.11.22", base_outdated=revoked)
    rebuilt_first = decide(state, None, now, base_rebuilding=True)
    assert rebuilt_first.reasons == [Reason.BASE_REBUILDING, Reason.BASE_OUTDATED]
    assert f"base-outdated: 2026.11.23 is outdated: {revoked}" in rebuilt_first.why()
    # N archived makes an older version the newest, but that one is no longer current either
    gone = "debian-12 2026.11.01 is archived"
    older = dataclasses.replace(state, base_latest="2026.11.01", base_latest_outdated=gone)
    waiting = decide(older, None, now)
    assert not waiting.rebuild and waiting.reasons == []
    assert "debian-12 has no current version to rebuild on (debian-12 2026.11.01 is archived)" in waiting.why()
    current = decide(dataclasses.replace(state, base_outdated=None), None, now)
    assert not current.rebuild and "base debian-12@2026.11.22 is the newest" in current.why()
