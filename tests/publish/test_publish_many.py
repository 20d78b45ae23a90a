"""Publishing to several repositories in one run (a file folder and a real OCI registry): every one is
written and verified, the catalogue records every location of each image and the version's SBOM
(API + version page), the signed lists keep the primary's URL, and a failure in any repository
leaves no catalogue entry. skopeo and curl read the registry; the catalogue is read over its API."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pipeline.catalogue.app import create_app
from pipeline.catalogue.settings import catalogue_settings
from pipeline.errors import ConfigError, UploadError
from pipeline.formats.sbom import sbom_json
from pipeline.publish import publish_version
from pipeline.settings import load_settings

from .conftest import ROOT, MiB, make_packaged_version, make_settings, run_invoke, settings_env
from .oci_registry import PASSWORD, Registry
from .test_oci import oci_env, project, registry  # noqa: F401 (fixtures)
from .test_publish import all_versions

LONG = "12-2026.11.22"


def test_one_publish_to_a_folder_and_a_registry_records_every_location_and_the_sbom(
    tmp_path: Path,
    registry: Registry,  # noqa: F811
    project: str,  # noqa: F811
    oci_env: None,  # noqa: F811
) -> None:
    folder = tmp_path / "repository"
    oci = f"oci://{registry.host}/{project}"
    settings = dataclasses.replace(make_settings(tmp_path, folder.as_uri()), mirror_repositories=(oci,))
    packaged = make_packaged_version(settings.output_dir, qcow2_size=2 * MiB + 7)
    result = publish_version(settings, "debian-12")

    # both repositories hold both images, each verified by a reader other than ours
    repo = f"{project}/debian-12"
    for role in ("qcow2", "ova"):
        artifact = packaged.manifest.artifact(role)
        stored = folder / "debian-12" / "2026.11.22" / artifact.name
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == artifact.sha256
        suffix = "-ova" if role == "ova" else ""
        [layer] = json.loads(registry.inspect_raw(f"{repo}:{LONG}{suffix}"))["layers"]
        assert layer["digest"] == "sha256:" + artifact.sha256
    assert len(result.puts) == 4 and len(result.pushes) == 2  # OVA, qcow2, two sums; the two artifacts

    references = {p.reference.split("@")[0].rsplit(":", 1)[1]: f"oci://{p.reference}" for p in result.pushes}
    assert result.registered is not None
    sbom = sbom_json(packaged.manifest)
    assert result.registered.sbom_sha256 == hashlib.sha256(sbom).hexdigest()
    with TestClient(create_app(catalogue_settings(settings), refresh_seconds=None)) as client:
        doc = client.get("/api/v1/appliances/debian-12/versions/2026.11.22").json()
        by_format = {i["format"]: i for i in doc["images"]}
        for fmt, tag in (("qcow2", LONG), ("ova", f"{LONG}-ova")):
            name = packaged.manifest.artifact(fmt).name
            primary = f"http://127.0.0.1:8080/repo/debian-12/2026.11.22/{name}"
            assert by_format[fmt]["uri"] == primary
            assert by_format[fmt]["locations"] == [primary, references[tag]]
        # the SBOM, downloadable from the API (linked from the version JSON and page), byte for byte
        assert doc["links"]["sbom"] == "/api/v1/appliances/debian-12/versions/2026.11.22/sbom"
        got = client.get(doc["links"]["sbom"])
        assert got.status_code == 200 and got.content == sbom
        assert got.headers["content-type"] == "application/vnd.cyclonedx+json"
        page = client.get("/appliances/debian-12/2026.11.22").text
        assert 'id="sbom" href="/api/v1/appliances/debian-12/versions/2026.11.22/sbom"' in page
        assert all(ref in page for ref in references.values())
        assert client.get("/api/v1/appliances/debian-12/versions/2026.11.23/sbom").status_code == 404

    # the version's JSON through the HTTP client contract carries the same locations
    assert {i.format: i.locations[1:] for i in result.registered.images} == {
        "ova": [references[f"{LONG}-ova"]],
        "qcow2": [references[LONG]],
    }


def test_a_failing_repository_leaves_no_catalogue_entry(
    tmp_path: Path,
    registry: Registry,  # noqa: F811
    project: str,  # noqa: F811
    oci_env: None,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = tmp_path / "repository"
    oci = f"oci://{registry.host}/{project}"
    settings = dataclasses.replace(make_settings(tmp_path, folder.as_uri()), mirror_repositories=(oci,))
    make_packaged_version(settings.output_dir)
    monkeypatch.setenv("VMI_OCI_PASSWORD", "wrong")
    with pytest.raises(UploadError, match="the credentials were refused"):
        publish_version(settings, "debian-12")
    assert all_versions(settings) == []
    assert registry.tags(f"{project}/debian-12") == []
    # every repository is checked before anything is sent: the folder got nothing either
    assert not (folder / "debian-12").exists()
    monkeypatch.setenv("VMI_OCI_PASSWORD", PASSWORD)
    done = publish_version(settings, "debian-12")
    assert [v.version for v in all_versions(settings)] == ["2026.11.22"]
    assert done.registered is not None and all(len(i.locations) == 2 for i in done.registered.images)


def test_the_repository_list_syntax_and_the_dry_run(tmp_path: Path, registry: Registry, project: str) -> None:  # noqa: F811
    folder = tmp_path / "repository"
    oci = f"oci://{registry.host}/{project}"
    settings = dataclasses.replace(make_settings(tmp_path, folder.as_uri()), mirror_repositories=(oci,))
    make_packaged_version(settings.output_dir)
    env = settings_env(settings)
    assert env["VMI_REPOSITORY"] == f"{folder.as_uri()} {oci}"
    loaded = load_settings({}, ROOT, env)
    assert (loaded.repository, loaded.mirror_repositories) == (folder.as_uri(), (oci,))
    got = run_invoke(["publish", "--appliance", "debian-12", "--dry-run"], {**env, "VMI_OCI_CA": str(registry.ca)})
    assert got.returncode == 0, got.stderr
    assert f" {folder.as_uri()}:\n  debian-12/2026.11.22/debian-12-2026.11.22.ova" in got.stdout
    assert f" {oci}:\n  image {registry.host}/{project}/debian-12:{LONG}@sha256:" in got.stdout
    assert f"  tag   {registry.host}/{project}/debian-12:{LONG}-ova\n" in got.stdout
    assert registry.tags(f"{project}/debian-12") == [] and not folder.exists()
    with pytest.raises(ConfigError, match=r"^invoke.yaml: vmi.repository: .* names a repository twice"):
        load_settings({}, ROOT, {**env, "VMI_REPOSITORY": f"{oci} {oci}"})


def test_retention_deletes_an_old_version_from_every_repository(
    tmp_path: Path,
    registry: Registry,  # noqa: F811
    project: str,  # noqa: F811
    oci_env: None,  # noqa: F811
) -> None:
    import datetime as dt

    from pipeline.appliance import find_appliance
    from pipeline.catalogue.client import open_catalogue
    from pipeline.rebuild.retention import apply_retention
    from pipeline.repository import open_repository

    folder = tmp_path / "repository"
    oci = f"oci://{registry.host}/{project}"
    settings = dataclasses.replace(make_settings(tmp_path, folder.as_uri()), mirror_repositories=(oci,))
    make_packaged_version(settings.output_dir)
    make_packaged_version(settings.output_dir, version="2026.11.23", seed="newer")
    publish_version(settings, "debian-12", version="2026.11.22")
    new = publish_version(settings, "debian-12", version="2026.11.23")
    appliance = find_appliance(settings.templates_dir, "debian-12")
    keep_one = dataclasses.replace(appliance, rebuild=dataclasses.replace(appliance.rebuild, keep_versions=1))
    catalogue = open_catalogue(settings)
    try:
        mirrors = [open_repository(settings, url=oci)]
        now = dt.datetime.now(dt.UTC)
        report = apply_retention({"debian-12": keep_one}, catalogue, open_repository(settings), now, mirrors=mirrors)
    finally:
        catalogue.close()
    assert report.errors == []
    deleted = report.deleted["debian-12 2026.11.22"]
    assert {"debian-12:12-2026.11.22", "debian-12:12-2026.11.22-ova"} <= set(deleted)
    assert "debian-12/2026.11.22/debian-12-2026.11.22.qcow2" in deleted
    old_folder = folder / "debian-12" / "2026.11.22"
    assert not old_folder.exists() or not any(old_folder.iterdir())
    assert (folder / "debian-12" / "2026.11.23" / "debian-12-2026.11.23.qcow2").is_file()
    images = new.plan.targets[1].images
    assert registry.tags(f"{project}/debian-12") == sorted(
        t for i in images for t in (*(x for x in i.tags if x), i.fallback_tag)
    )


def test_invoke_audit_checks_every_repository(tmp_path: Path) -> None:
    """Two folders, the second a mirror: `invoke audit` checks both; damage in the mirror is drift named
    for the mirror alone, and the exit code says so."""
    primary, mirror = tmp_path / "primary", tmp_path / "mirror"
    settings = dataclasses.replace(make_settings(tmp_path, primary.as_uri()), mirror_repositories=(mirror.as_uri(),))
    packaged = make_packaged_version(settings.output_dir)
    publish_version(settings, "debian-12")
    env = settings_env(settings)

    done = run_invoke(["audit"], env)
    assert done.returncode == 0, done.stderr
    assert f"audit of {primary.as_uri()}: 2 registered image(s) checked, no drift" in done.stdout
    assert f"audit of {mirror.as_uri()}: 2 registered image(s) checked, no drift" in done.stdout

    qcow2 = packaged.manifest.artifact("qcow2").name
    damaged = mirror / "debian-12" / "2026.11.22" / qcow2
    damaged.write_bytes(b"\0" + damaged.read_bytes()[1:])  # same size, other bytes
    done = run_invoke(["audit"], env)
    assert done.returncode == 1
    assert f"audit of {primary.as_uri()}: 2 registered image(s) checked, no drift" in done.stdout
    assert f"audit of {mirror.as_uri()}: 2 registered image(s) checked, 2 problem(s)" in done.stdout
    drift = [line for line in done.stdout.splitlines() if "DRIFT" in line]
    assert [d.split(": ")[2].split()[0] for d in drift] == ["sha256", "sha512"]
    assert all(f"debian-12 2026.11.22: debian-12/2026.11.22/{qcow2}" in d for d in drift)
