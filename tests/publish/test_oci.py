"""Publishing to a real OCI registry: Debian's docker-registry on loopback with TLS from a test CA and
htpasswd basic auth. What landed is read by skopeo and curl, never only by our own client."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.appliance import find_appliance
from pipeline.errors import ConfigError, UploadError
from pipeline.formats.oci import EMPTY_DESCRIPTOR, INDEX_TYPE, MANIFEST_TYPE
from pipeline.formats.sbom import sbom_json
from pipeline.publish import PublishResult, audit_repository, publish_version
from pipeline.repository import open_repository
from pipeline.repository.oci import parse_oci_url
from pipeline.repository.oci_client import load_credentials, tls_verify
from pipeline.settings import Settings

from .conftest import ROOT, MiB, PackagedVersion, make_packaged_version, make_settings, run_invoke, settings_env
from .oci_registry import PASSWORD, USER, Registry, TokenServer, start_registry, start_token_registry


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from start_registry(tmp_path_factory.mktemp("registry"))


@pytest.fixture
def project() -> str:
    return f"vmi{uuid.uuid4().hex[:10]}"


@pytest.fixture
def oci_env(monkeypatch: pytest.MonkeyPatch, registry: Registry, tmp_path: Path) -> None:
    """Credentials and the private CA, with the machine's REQUESTS_CA_BUNDLE/SSL_CERT_FILE still set."""
    monkeypatch.setenv("VMI_OCI_USERNAME", USER)
    monkeypatch.setenv("VMI_OCI_PASSWORD", PASSWORD)
    monkeypatch.setenv("VMI_OCI_CA", str(registry.ca))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    monkeypatch.setenv("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no auth file of the person running the tests
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)


def setup(tmp_path: Path, registry: Registry, project: str, seed: str = "") -> tuple[Settings, PackagedVersion]:
    settings = make_settings(tmp_path, f"oci://{registry.host}/{project}")
    return settings, make_packaged_version(settings.output_dir, qcow2_size=3 * MiB + 12345, seed=seed)


LONG, ROLLING = "12-2026.11.22", "12"


def version_tags(result: PublishResult) -> list[str]:
    """Every tag a publish puts: each artifact's (qcow2, OVA) long and rolling tag and its referrers index."""
    images = result.plan.targets[0].images
    return sorted(t for i in images for t in (*(x for x in i.tags if x), i.fallback_tag))


def test_an_oci_publish_reloads_from_its_receipt(
    tmp_path: Path, registry: Registry, project: str, oci_env: None
) -> None:
    """The receipt names the registry; the load plans the same images (manifests, tags, references)."""
    settings, packaged = setup(tmp_path, registry, project)
    published = publish_version(settings, "debian-12")
    definition = find_appliance(ROOT / "packer_templates", "debian-12", ROOT / "provisioners")
    loaded = PublishResult.load(settings, definition, packaged.version)
    assert loaded == published and loaded.pushes and loaded.plan.targets[0].images


def test_publish_pushes_the_qcow2_with_egi_annotations_and_sbom(
    tmp_path: Path, registry: Registry, project: str, oci_env: None
) -> None:
    settings, packaged = setup(tmp_path, registry, project)
    result = publish_version(settings, "debian-12")
    repo = f"{project}/debian-12"
    qcow2 = packaged.manifest.artifact("qcow2")

    qcow2_plan, ova_plan = result.plan.targets[0].images
    assert registry.tags(repo) == version_tags(result)
    assert version_tags(result) == sorted(
        [LONG, ROLLING, f"{LONG}-ova", f"{ROLLING}-ova", qcow2_plan.fallback_tag, ova_plan.fallback_tag]
    )
    raw = registry.inspect_raw(f"{repo}:{LONG}")
    assert registry.inspect_raw(f"{repo}:{ROLLING}") == raw
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    assert result.pushes[0].reference == f"{registry.host}/{repo}:{LONG}@{digest}"
    image = json.loads(raw)
    assert image["mediaType"] == MANIFEST_TYPE and image["schemaVersion"] == 2
    assert image["config"] == EMPTY_DESCRIPTOR
    assert len(image["layers"]) == 1
    layer = image["layers"][0]
    assert (layer["mediaType"], layer["digest"], layer["size"]) == (
        "application/x-qemu-disk",
        "sha256:" + qcow2.sha256,
        qcow2.size,
    )
    assert layer["annotations"] == {
        "eu.egi.cloud.tag": "2026.11.22",
        "eu.egi.cloud.description": "Debian 12 (bookworm) baseline",
        "org.openstack.glance.os_distro": "debian",
        "org.openstack.glance.os_version": "12",
        "org.openstack.glance.os_type": "linux",
        "org.openstack.glance.os_admin_user": "debian",
        "org.openstack.glance.architecture": "x86_64",
        "org.openstack.glance.disk_format": "qcow2",
        "org.openstack.glance.container_format": "bare",
        "org.opencontainers.image.title": qcow2.name,
    }
    assert image["annotations"] == {
        "org.opencontainers.image.created": "2026-11-22T01:02:03Z",
        "org.opencontainers.image.version": "2026.11.22",
        "org.opencontainers.image.source": "https://example.org/vmi-pipeline/appliances/debian-12",
    }

    # the blob, downloaded by curl and hashed here
    pulled = tmp_path / "pulled.qcow2"
    registry.curl_blob(repo, layer["digest"], pulled)
    assert hashlib.sha256(pulled.read_bytes()).hexdigest() == qcow2.sha256

    # the SBOM referrer, found through the tag-schema fallback index
    index = json.loads(registry.inspect_raw(f"{repo}:sha256-{digest.split(':')[1]}"))
    assert index["mediaType"] == INDEX_TYPE
    [entry] = index["manifests"]
    assert entry["artifactType"] == "application/vnd.cyclonedx+json"
    referrer_raw = registry.inspect_raw(f"{repo}@{entry['digest']}")
    referrer = json.loads(referrer_raw)
    assert referrer["subject"] == {"mediaType": MANIFEST_TYPE, "digest": digest, "size": len(raw)}
    assert referrer["artifactType"] == "application/vnd.cyclonedx+json"
    sbom_file = tmp_path / "sbom.json"
    registry.curl_blob(repo, referrer["layers"][0]["digest"], sbom_file)
    assert sbom_file.read_bytes() == sbom_json(packaged.manifest)

    # the OVA: its own artifact in the same repository, tags with -ova (atrope's '-'-free pattern skips them)
    ova = packaged.manifest.artifact("ova")
    ova_raw = registry.inspect_raw(f"{repo}:{LONG}-ova")
    assert registry.inspect_raw(f"{repo}:{ROLLING}-ova") == ova_raw
    ova_image = json.loads(ova_raw)
    assert ova_image["config"] == EMPTY_DESCRIPTOR and ova_image["annotations"] == image["annotations"]
    [ova_layer] = ova_image["layers"]
    assert (ova_layer["mediaType"], ova_layer["digest"], ova_layer["size"]) == (
        "application/ovf",
        "sha256:" + ova.sha256,
        ova.size,
    )
    assert ova_layer["annotations"] == {
        **layer["annotations"],
        "org.openstack.glance.disk_format": "vmdk",
        "org.openstack.glance.container_format": "ova",
        "org.opencontainers.image.title": ova.name,
    }
    registry.curl_blob(repo, ova_layer["digest"], pulled)
    assert hashlib.sha256(pulled.read_bytes()).hexdigest() == ova.sha256
    ova_digest = "sha256:" + hashlib.sha256(ova_raw).hexdigest()
    [ova_entry] = json.loads(registry.inspect_raw(f"{repo}:sha256-{ova_digest.split(':')[1]}"))["manifests"]
    ova_referrer = json.loads(registry.inspect_raw(f"{repo}@{ova_entry['digest']}"))
    assert ova_referrer["subject"]["digest"] == ova_digest
    assert ova_referrer["layers"][0]["digest"] == referrer["layers"][0]["digest"]  # the same SBOM

    # the catalogue names each image by its reference
    assert result.registered is not None
    assert sorted(i.uri for i in result.registered.images) == sorted(f"oci://{p.reference}" for p in result.pushes)
    assert [p.reference.split("@")[1] for p in result.pushes] == [digest, ova_digest]


def test_publishing_again_proves_what_is_there_and_changes_nothing(
    tmp_path: Path, registry: Registry, project: str, oci_env: None
) -> None:
    settings, _ = setup(tmp_path, registry, project)
    first = publish_version(settings, "debian-12")
    repo = f"{project}/debian-12"
    raw, tags = registry.inspect_raw(f"{repo}:{LONG}"), registry.tags(repo)
    again = publish_version(settings, "debian-12")
    assert "disk already there; blobs, manifests and tags read back and verified" in again.summary()
    assert again.pushes[0].reference == first.pushes[0].reference
    assert registry.inspect_raw(f"{repo}:{LONG}") == raw and registry.tags(repo) == tags
    index = json.loads(registry.inspect_raw(f"{repo}:{first.plan.oci.fallback_tag}"))  # type: ignore[union-attr]
    assert len(index["manifests"]) == 1  # the referrer is listed once, not once per run


def test_a_tag_already_pointing_elsewhere_is_refused(
    tmp_path: Path, registry: Registry, project: str, oci_env: None
) -> None:
    settings, _ = setup(tmp_path / "a", registry, project)
    published = publish_version(settings, "debian-12")
    repo = f"{project}/debian-12"
    raw = registry.inspect_raw(f"{repo}:{LONG}")
    other, _ = setup(tmp_path / "b", registry, project, seed="other bytes")  # same version, other disk
    with pytest.raises(UploadError) as e:
        publish_version(other, "debian-12")
    assert str(e.value).startswith(f"{registry.host}/{repo}:{LONG} already points at sha256:")
    assert "a published tag is immutable" in str(e.value)
    assert registry.inspect_raw(f"{repo}:{LONG}") == raw
    assert registry.inspect_raw(f"{repo}:{ROLLING}") == raw  # the rolling tag did not move either
    assert published.pushes


def test_wrong_or_missing_credentials_fail_before_anything_is_sent(
    tmp_path: Path, registry: Registry, project: str, oci_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, _ = setup(tmp_path, registry, project)
    monkeypatch.setenv("VMI_OCI_PASSWORD", "wrong")
    with pytest.raises(UploadError) as e:
        publish_version(settings, "debian-12")
    assert str(e.value).startswith(f"{registry.host}: GET /v2/: HTTP 401: the credentials were refused")
    monkeypatch.delenv("VMI_OCI_USERNAME")
    monkeypatch.delenv("VMI_OCI_PASSWORD")
    with pytest.raises(UploadError) as e:
        publish_version(settings, "debian-12")
    assert str(e.value).startswith(f"{registry.host}: GET /v2/: HTTP 401: no credentials")
    assert registry.tags(f"{project}/debian-12") == []


def test_credentials_from_the_podman_or_docker_auth_file(
    tmp_path: Path, registry: Registry, project: str, oci_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, _ = setup(tmp_path, registry, project)
    monkeypatch.delenv("VMI_OCI_USERNAME")
    monkeypatch.delenv("VMI_OCI_PASSWORD")
    docker = tmp_path / "home" / ".docker"
    docker.mkdir(parents=True)
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (docker / "config.json").write_text(json.dumps({"auths": {registry.host: {"auth": token}}}))
    assert publish_version(settings, "debian-12").pushes
    assert LONG in registry.tags(f"{project}/debian-12")


def test_the_private_ca_wins_over_requests_ca_bundle(
    tmp_path: Path, registry: Registry, project: str, oci_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """REQUESTS_CA_BUNDLE/SSL_CERT_FILE stay set (oci_env) and the push above worked: VMI_OCI_CA was used.
    Without VMI_OCI_CA the system bundle is used and the test CA is unknown: refused, with the fix."""
    settings, _ = setup(tmp_path, registry, project)
    monkeypatch.delenv("VMI_OCI_CA")
    with pytest.raises(UploadError) as e:
        publish_version(settings, "debian-12")
    assert str(e.value).startswith(f"{registry.host}: TLS verification failed")
    assert "hint: set VMI_OCI_CA" in str(e.value)
    assert tls_verify({"VMI_OCI_CA": str(registry.ca), "REQUESTS_CA_BUNDLE": "/x", "SSL_CERT_FILE": "/y"}) == str(
        registry.ca
    )
    assert tls_verify({"REQUESTS_CA_BUNDLE": "/x", "SSL_CERT_FILE": "/y"}) == "/x"
    assert tls_verify({}) is True
    with pytest.raises(ConfigError, match="^environment: VMI_OCI_CA: /nonexistent is not a file"):
        tls_verify({"VMI_OCI_CA": "/nonexistent"})


def test_dry_run_prints_references_tags_manifests_and_pushes_nothing(
    tmp_path: Path, registry: Registry, project: str, oci_env: None
) -> None:
    settings, packaged = setup(tmp_path, registry, project)
    text = publish_version(settings, "debian-12", dry_run=True).summary()
    repo = f"{project}/debian-12"
    assert f"dry run: would publish debian-12 2026.11.22 to oci://{registry.host}/{project}" in text
    assert f"  tag   {registry.host}/{repo}:{LONG}" in text and f"  tag   {registry.host}/{repo}:{ROLLING}" in text
    assert '"eu.egi.cloud.tag": "2026.11.22"' in text and '"application/x-qemu-disk"' in text
    assert '"artifactType": "application/vnd.cyclonedx+json"' in text and "fallback tag sha256-" in text
    assert registry.tags(repo) == []
    real = publish_version(settings, "debian-12")
    assert f"  image {real.pushes[0].reference}" in text  # the digest shown before is the digest pushed


@pytest.mark.parametrize(
    ("url", "insecure", "message"),
    [
        ("oci://", False, "VMI_REPOSITORY: 'oci://': an OCI repository is oci://HOST[:PORT]/PROJECT"),
        ("oci://registry.example.org", False, "an OCI repository is oci://HOST[:PORT]/PROJECT"),
        ("oci://u:p@registry.example.org/x", False, "credentials do not go in the URL"),
        ("oci://registry.example.org/Bad_Project", False, "project 'Bad_Project' is not a valid"),
        ("oci://registry.example.org/egi", True, "--insecure: registry.example.org is not a loopback address"),
    ],
)
def test_bad_oci_urls_get_one_clear_line(url: str, insecure: bool, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_oci_url(url, insecure)
    assert message in str(e.value)


def test_insecure_is_allowed_on_loopback_only() -> None:
    assert parse_oci_url("oci://127.0.0.1:5000/p", insecure=True).scheme == "http"
    assert parse_oci_url("oci://localhost:5000/p", insecure=True).scheme == "http"
    assert parse_oci_url("oci://[::1]:5000/p", insecure=True).scheme == "http"
    assert parse_oci_url("oci://registry.egi.eu/egi_vm_images").scheme == "https"


def test_credentials_are_both_or_neither(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^environment: VMI_OCI_USERNAME and VMI_OCI_PASSWORD go together"):
        load_credentials("h", {"VMI_OCI_USERNAME": "u", "HOME": str(tmp_path)})
    bad = tmp_path / "auth.json"
    bad.write_text(json.dumps({"auths": {"h:5000": {"auth": "not base64!"}}}))
    with pytest.raises(ConfigError, match=r"auth.json: auths.h:5000.auth: not base64 of user:password"):
        load_credentials("h:5000", {"REGISTRY_AUTH_FILE": str(bad), "HOME": str(tmp_path)})
    assert load_credentials("other", {"REGISTRY_AUTH_FILE": str(bad), "HOME": str(tmp_path)}) is None


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, TokenServer]]:
    yield from start_token_registry(tmp_path_factory.mktemp("registry-token"))


def test_bearer_token_challenges_are_answered(
    tmp_path: Path,
    token_registry: tuple[Registry, TokenServer],
    project: str,
    oci_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Harbor and Docker Hub answer with ``Bearer realm=...,service=...,scope=...``: the token service
    gets the basic credentials, the registry gets the token for the repository's pull,push scope."""
    registry, tokens = token_registry
    monkeypatch.setenv("VMI_OCI_CA", str(registry.ca))
    settings, _ = setup(tmp_path, registry, project)
    result = publish_version(settings, "debian-12")
    # the registry names the actions in either order (distribution's challenge is built from a Go map)
    asked = {(s.rsplit(":", 1)[0], frozenset(s.rsplit(":", 1)[1].split(","))) for s in tokens.scopes}
    assert (f"repository:{project}/debian-12", frozenset({"pull", "push"})) in asked, tokens.scopes
    raw = registry.inspect_raw(f"{project}/debian-12:{ROLLING}")  # skopeo does the token dance itself
    assert result.pushes[0].reference.endswith("@sha256:" + hashlib.sha256(raw).hexdigest())
    monkeypatch.setenv("VMI_OCI_PASSWORD", "wrong")
    with pytest.raises(UploadError, match=r"GET /v2/: HTTP 401: the credentials were refused"):
        publish_version(settings, "debian-12")


def test_audit_reads_back_registered_images_and_retention_deletes_old_tags_with_referrers(
    tmp_path: Path, registry: Registry, project: str, oci_env: None
) -> None:
    settings, _ = setup(tmp_path, registry, project)
    make_packaged_version(settings.output_dir, version="2026.11.23", qcow2_size=MiB + 1, seed="newer")
    old = publish_version(settings, "debian-12", version="2026.11.22")
    new = publish_version(settings, "debian-12", version="2026.11.23")
    repo = f"{project}/debian-12"
    report = audit_repository(settings)
    assert (report.ok, report.checked) == (True, 4), report.summary()
    rerun = publish_version(settings, "debian-12", version="2026.11.22")  # a rerun of the older publish
    assert "  rolling tag: left on a newer version" in rerun.summary()
    assert "  rolling tag 12: now this image" in new.summary()
    assert registry.inspect_raw(f"{repo}:12") == registry.inspect_raw(f"{repo}:12-2026.11.23")  # not rolled back

    repository = open_repository(settings)
    with pytest.raises(UploadError, match=r":12-2026.11.23: the rolling tag 12 still points at it; not deleted\n"):
        repository.delete("debian-12:12-2026.11.23")
    old_key = repository.key_for_url(f"oci://{old.pushes[0].reference}")
    assert old_key == "debian-12:12-2026.11.22"
    old_fallback = old.plan.targets[0].images[0].fallback_tag
    repository.delete(old_key)
    assert registry.tags(repo) == sorted({*version_tags(new), *version_tags(old)} - {"12-2026.11.22", old_fallback})
    old_sbom = old.plan.oci.referrer  # type: ignore[union-attr]
    gone = registry.skopeo(
        "inspect", "--raw", f"docker://{registry.host}/{repo}@sha256:{hashlib.sha256(old_sbom).hexdigest()}"
    )
    assert gone.returncode != 0 and "manifest unknown" in gone.stderr
    report = audit_repository(settings)
    assert report.drift == (
        f"debian-12 2026.11.22: debian-12:12-2026.11.22: no such tag in oci://{registry.host}/{project}",
    )


def test_invoke_publish_dry_run_and_a_refused_insecure(tmp_path: Path, registry: Registry, project: str) -> None:
    settings, _ = setup(tmp_path, registry, project)
    env = {
        **settings_env(settings),
        "VMI_OCI_USERNAME": USER,
        "VMI_OCI_PASSWORD": PASSWORD,
        "VMI_OCI_CA": str(registry.ca),
        "HOME": str(tmp_path / "home"),
    }
    got = run_invoke(["publish", "--appliance", "debian-12", "--dry-run"], env)
    assert got.returncode == 0, got.stderr
    assert f"  tag   {registry.host}/{project}/debian-12:{LONG}\n" in got.stdout
    assert '"org.openstack.glance.os_admin_user": "debian"' in got.stdout
    assert registry.tags(f"{project}/debian-12") == []
    env["VMI_REPOSITORY"] = f"oci://registry.example.org/{project}"
    got = run_invoke(["publish", "--appliance", "debian-12", "--insecure"], env)
    assert got.returncode != 0
    assert "--insecure: registry.example.org is not a loopback address" in got.stderr


def test_rebuild_retention_keeps_n_and_deletes_older_tags_with_their_referrers(
    tmp_path: Path, registry: Registry, project: str, oci_env: None
) -> None:
    import dataclasses
    import datetime as dt

    from pipeline.appliance import find_appliance
    from pipeline.catalogue.client import open_catalogue
    from pipeline.rebuild.retention import apply_retention

    settings, _ = setup(tmp_path, registry, project)
    make_packaged_version(settings.output_dir, version="2026.11.23", qcow2_size=MiB + 1, seed="newer")
    publish_version(settings, "debian-12", version="2026.11.22")
    new = publish_version(settings, "debian-12", version="2026.11.23")
    appliance = find_appliance(settings.templates_dir, "debian-12")
    keep_one = dataclasses.replace(appliance, rebuild=dataclasses.replace(appliance.rebuild, keep_versions=1))
    catalogue = open_catalogue(settings)
    try:
        report = apply_retention({"debian-12": keep_one}, catalogue, open_repository(settings), dt.datetime.now(dt.UTC))
    finally:
        catalogue.close()
    assert report.errors == []
    assert report.deleted == {"debian-12 2026.11.22": ["debian-12:12-2026.11.22", "debian-12:12-2026.11.22-ova"]}
    repo = f"{project}/debian-12"
    assert registry.tags(repo) == version_tags(new)


def test_the_tag_scheme_comes_from_the_appliance_definition(
    tmp_path: Path, registry: Registry, project: str, oci_env: None
) -> None:
    import dataclasses
    import shutil

    import yaml

    root = tmp_path / "project"
    shutil.copytree(ROOT / "packer_templates" / "debian-12", root / "packer_templates" / "debian-12")
    shutil.copytree(ROOT / "provisioners", root / "provisioners")
    definition = root / "packer_templates" / "debian-12" / "appliance.yaml"
    data = yaml.safe_load(definition.read_text())
    data["oci"] = {"tag": "{name}-{arch}-{version}", "rolling_tag": "bookworm"}
    data["os"]["admin_user"] = "cloud"
    definition.write_text(yaml.safe_dump(data))
    settings = dataclasses.replace(make_settings(tmp_path, f"oci://{registry.host}/{project}"), root=root)
    packaged = make_packaged_version(settings.output_dir)
    result = publish_version(settings, "debian-12")
    repo = f"{project}/debian-12"
    long_tag = "debian-12-x86_64-2026.11.22"
    assert registry.tags(repo) == version_tags(result)
    assert {long_tag, "bookworm", f"{long_tag}-ova", "bookworm-ova"} <= set(registry.tags(repo))
    raw = registry.inspect_raw(f"{repo}:bookworm")
    assert raw == registry.inspect_raw(f"{repo}:{long_tag}")
    [layer] = json.loads(raw)["layers"]
    assert layer["digest"] == "sha256:" + packaged.manifest.artifact("qcow2").sha256
    assert layer["annotations"]["org.openstack.glance.os_admin_user"] == "cloud"
    # retention finds the rolling tag whatever its name: the current version is not deleted
    with pytest.raises(UploadError, match=f":{long_tag}: the rolling tag bookworm still points at it"):
        open_repository(settings).delete(f"debian-12:{long_tag}")
