"""CI runners start empty: the catalogue and the repository are the state (issue 13).

- the decision on an empty runner equals the decision on a warm one (catalogue over HTTP);
- a layered build on a runner that never saw its base fetches the base's qcow2 from the repository
  (file:// and S3 on loopback), verified against the catalogue's sha512, cached content-addressed;
- two runners publishing the same appliance at once end with one version; the loser says so, exit 0.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline.appliance import load_all
from pipeline.builder.published import fetch_published_disk, newest_base_build
from pipeline.catalogue.client import open_catalogue
from pipeline.catalogue.contract import AppliancePayload, BuildRecord
from pipeline.errors import BuildError, CatalogueError, ConfigError
from pipeline.fsutil import Digests, hash_file
from pipeline.manifest import BuildManifest
from pipeline.rebuild import rebuild_appliances
from pipeline.rebuild.history import LocalHistory, open_history
from pipeline.rebuild.inputs import current_inputs
from pipeline.rebuild.plan import make_plan
from pipeline.rebuild.scaffold import scaffold_appliance
from pipeline.repository import open_repository
from pipeline.settings import Settings
from tests.publish.conftest import S3_ENV, bucket, moto_endpoint, s3  # noqa: F401 -- fixtures
from tests.rebuild.conftest import Mirror, make_settings, manifest
from tests.rebuild.served import payload_of, served_catalogue
from tests.rebuild.test_rebuild_run import as_built

NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)


def _publish_record(settings: Settings, m: BuildManifest, uri: str, digests: Digests | None = None) -> None:
    catalogue = open_catalogue(settings)
    try:
        catalogue.ensure_appliance(
            AppliancePayload(name=m.appliance, title=m.appliance, description=f"{m.appliance} appliance")
        )
        catalogue.register_version(payload_of(m, uri, digests))
    finally:
        catalogue.close()


def _empty_runner(warm: Settings, root: Path) -> Settings:
    """A fresh clone: the same definitions, an empty output/ and .cache/."""
    shutil.copytree(warm.templates_dir, root / "packer_templates")
    shutil.copytree(warm.provisioners_dir, root / "provisioners")
    return dataclasses.replace(
        make_settings(root), catalogue=warm.catalogue, repository=warm.repository,
        repository_public_url=warm.repository_public_url,
    )  # fmt: skip


def test_decision_on_an_empty_runner_equals_the_warm_one(project: Settings, mirror: Mirror, tmp_path: Path) -> None:
    src = mirror.sources()
    as_built(project, "debian-12", src)
    scaffold_appliance(project, "science", "debian-12")
    scaffold_appliance(project, "gpu", "debian-12")
    as_built(project, "science", src, base="debian-12")  # gpu was never built
    with served_catalogue(tmp_path / "c.db", None, repository_public_url="https://b.example.org") as served:
        warm = dataclasses.replace(project, catalogue=served.url)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("VMI_CATALOGUE_TOKEN", served.token)
            for name in ("debian-12", "science"):
                m = LocalHistory(warm.output_dir).newest(name)
                assert m is not None
                _publish_record(warm, m, f"https://b.example.org/{name}/{m.version}/{name}.qcow2")
            empty = _empty_runner(warm, tmp_path / "fresh")
            assert not empty.output_dir.exists()
            apps = load_all(warm.templates_dir, warm.provisioners_dir)

            def decide(settings: Settings, offline: bool = False) -> list[tuple[str, bool, str]]:
                with open_history(settings, offline) as history:
                    plan = make_plan(settings, apps, current_inputs(settings), None, NOW, history)
                return [(d.appliance, d.rebuild, d.why()) for d in plan.decisions]

            on_warm, on_empty = decide(warm), decide(empty)
    assert on_empty == on_warm
    assert on_warm == [
        ("debian-12", False, on_warm[0][2]),
        ("gpu", True, "never-built: no built version yet"),
        ("science", False, on_warm[2][2]),
    ]
    assert "inputs unchanged" in on_warm[2][2] and "base debian-12@2026.11.21 is the newest" in on_warm[2][2]
    # what the empty runner decides from its own disk (offline): everything "never built"
    with open_history(empty, offline=True) as history:
        assert history.newest("debian-12") is None and history.source.endswith("(offline)")


def _qcow2(path: Path, size: str) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path


def _record(settings: Settings, name: str, version: str, key: str, disk: Path) -> BuildRecord:
    """Put ``disk`` in the repository at ``key`` and register a version of ``name`` listing it."""
    repository = open_repository(settings)
    repository.preflight()
    digests = hash_file(disk)
    repository.put(key, disk, digests)
    m = manifest(name, version)
    _publish_record(settings, m, repository.public_url(key), digests)
    catalogue = open_catalogue(settings)
    try:
        record = catalogue.build_record(name)
    finally:
        catalogue.close()
    assert record is not None and record.images[0].sha512 == digests.sha512
    return record


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_a_base_never_built_here_is_fetched_verified_and_cached(
    backend: str, project: Settings, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend == "s3":
        for k, v in S3_ENV.items():
            monkeypatch.setenv(k, v)
        name = request.getfixturevalue("bucket")
        settings = dataclasses.replace(
            project, repository=f"s3://{name}/vmi", repository_public_url=f"https://{name}.example.org/vmi",
            s3_endpoint_url=request.getfixturevalue("moto_endpoint"),
        )  # fmt: skip
    else:
        settings = dataclasses.replace(project, repository=(tmp_path / "repo").as_uri())
    settings = dataclasses.replace(settings, catalogue=f"sqlite:///{tmp_path / 'c.db'}")
    disk = _qcow2(tmp_path / "base.qcow2", "64M")
    record = _record(settings, "debian-12", "2026.11.21", "debian-12/2026.11.21/debian-12-2026.11.21.qcow2", disk)

    found = newest_base_build(settings, "debian-12")  # nothing in output/: the catalogue's newest
    assert found.version_dir is None and found.manifest.version == "2026.11.21"
    path = fetch_published_disk(settings, record)
    assert path == settings.cache_dir / "images" / f"sha512-{record.images[0].sha512}.qcow2"
    assert path.read_bytes() == disk.read_bytes()
    open_repository(settings).delete("debian-12/2026.11.21/debian-12-2026.11.21.qcow2")
    assert fetch_published_disk(settings, record) == path  # from the cache, verified, no download

    # the repository holds other bytes than the catalogue says: refused, nothing cached
    other = _qcow2(tmp_path / "other.qcow2", "32M")
    repository = open_repository(settings)
    key = "debian-12/2026.11.22/debian-12-2026.11.22.qcow2"
    repository.put(key, other, hash_file(other))
    claimed = "e" * 128  # what the catalogue says; the repository holds other bytes
    image = record.images[0].model_copy(
        update={"uri": repository.public_url(key), "sha512": claimed, "size": other.stat().st_size}
    )
    lying = record.model_copy(update={"version": "2026.11.22", "images": [image]})
    with pytest.raises(BuildError) as e:
        fetch_published_disk(settings, lying)
    assert (
        f"base debian-12 2026.11.22: {repository.url}: debian-12/2026.11.22/debian-12-2026.11.22.qcow2: sha512 is "
        in (e.value.message)
    )
    got = hash_file(other).sha512
    assert e.value.message.endswith(f"sha512 is {got[:16]}..., the catalogue says {'e' * 16}...")
    # more bytes than the catalogue recorded: the read stops there (a repository cannot fill the disk)
    short = lying.model_copy(update={"version": "2026.11.23", "images": [image.model_copy(update={"size": 100})]})
    with pytest.raises(BuildError) as e:
        fetch_published_disk(settings, short)
    assert e.value.message.endswith(f"base debian-12 2026.11.23: {repository.url}: {key} is larger than 100 bytes")
    assert sorted(p.name for p in (settings.cache_dir / "images").iterdir()) == [path.name]


def test_no_base_anywhere_names_both_places(project: Settings, tmp_path: Path) -> None:
    settings = dataclasses.replace(project, catalogue=f"sqlite:///{tmp_path / 'c.db'}")
    open_catalogue(settings).close()  # an empty catalogue
    with pytest.raises(Exception) as e:
        newest_base_build(settings, "debian-12")
    assert f"and the catalogue {settings.catalogue} has no published version" in str(e.value)


def test_a_ci_runner_without_a_catalogue_refuses_to_decide(project: Settings, tmp_path: Path) -> None:
    missing = dataclasses.replace(project, catalogue=f"sqlite:///{tmp_path / 'none.db'}")
    with pytest.raises(ConfigError) as e, open_history(missing, environ={"CI": "true"}):
        pass
    assert e.value.message == (
        f"vmi.catalogue: sqlite:///{tmp_path / 'none.db'} does not exist on this CI runner, "
        "so every appliance would look never built"
    )
    assert e.value.hint is not None and "VMI_CATALOGUE" in e.value.hint
    with open_history(missing, offline=True, environ={"CI": "true"}) as history:  # asked for: allowed
        assert isinstance(history, LocalHistory)
    assert not (tmp_path / "none.db").exists()


def test_an_unreachable_catalogue_stops_the_decision(project: Settings) -> None:
    """Deciding without the catalogue would rebuild and republish everything: the run stops instead."""
    from tests.catalogue.pgserver import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings = dataclasses.replace(project, catalogue=url)
    with pytest.raises(CatalogueError) as e:
        rebuild_appliances(settings, ["debian-12"], dry_run=True, now=NOW)
    assert e.value.message.startswith(f"catalogue {url} is unreachable: ")
