"""The catalogue seam, counted: how often publish, release, rebuild and endorse open the catalogue, run Alembic,
load the endorser's signing key and store an audit.

The real functions run; each is wrapped by a counter that calls through (nothing is mocked away):
``InProcessCatalogue.__init__`` (an open), ``alembic.command.upgrade`` (a migration run),
``signing.load_signing_identity`` (a key load), ``InProcessCatalogue.store_audit`` (an audit stored).
A signing key is configured throughout, so "no key load during publish" is a real finding, not the
absence of a key.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import alembic.command
import pytest
from sqlalchemy import create_engine, text

from pipeline.appliance import find_appliance
from pipeline.catalogue import signing
from pipeline.catalogue.client import open_catalogue
from pipeline.catalogue.db import downgrade, head_revision
from pipeline.catalogue.inprocess import InProcessCatalogue
from pipeline.catalogue.server import migrate_catalogue
from pipeline.endorse import endorse_version
from pipeline.endorse.pki import DevCa, make_dev_ca
from pipeline.errors import CatalogueError
from pipeline.manifest import BuildManifest
from pipeline.publish import publish_version
from pipeline.recipe import release_appliance, run_recipe
from pipeline.settings import Settings
from tests.endorse.conftest import serve_folder
from tests.endorse.disks import good_rootfs, security_packages
from tests.endorse.test_audit_version import built_version, project
from tests.endorse.test_endorse_flow import publish as register_version
from tests.endorse.test_resume import ResumedStages
from tests.publish.conftest import make_packaged_version, make_settings

VO = "vo.example.org"


@pytest.fixture(scope="module")
def dev_ca(tmp_path_factory: pytest.TempPathFactory) -> DevCa:
    return make_dev_ca(tmp_path_factory.mktemp("dev-ca"))


@pytest.fixture
def signing_key(dev_ca: DevCa, monkeypatch: pytest.MonkeyPatch) -> DevCa:
    monkeypatch.setenv("VMI_SIGNING_KEY", str(dev_ca.endorser_key))
    monkeypatch.setenv("VMI_SIGNING_CERT", str(dev_ca.endorser_cert))
    return dev_ca


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counters of the real calls, from now on."""
    counted: Counter[str] = Counter()

    def through(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counted[name] += 1
            return func(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(InProcessCatalogue, "__init__", through("opens", InProcessCatalogue.__init__))
    monkeypatch.setattr(InProcessCatalogue, "store_audit", through("audits stored", InProcessCatalogue.store_audit))
    monkeypatch.setattr(alembic.command, "upgrade", through("migrations", alembic.command.upgrade))
    monkeypatch.setattr(signing, "load_signing_identity", through("key loads", signing.load_signing_identity))
    return counted


def first_start(settings: Settings) -> None:
    """What happens once per catalogue: the new database gets its schema."""
    open_catalogue(settings).close()


def test_the_first_start_creates_the_schema_and_later_opens_only_check_it(
    tmp_path: Path, signing_key: DevCa, counts: Counter[str]
) -> None:
    settings = make_settings(tmp_path, (tmp_path / "repository").as_uri())
    first_start(settings)
    assert counts == Counter({"opens": 1, "migrations": 1})
    counts.clear()
    for _ in range(3):
        open_catalogue(settings).close()
    assert counts == Counter({"opens": 3})  # at head: a revision query, no Alembic run, no key


def test_publish_opens_once_and_neither_migrates_nor_loads_the_key(
    tmp_path: Path, signing_key: DevCa, counts: Counter[str]
) -> None:
    settings = make_settings(tmp_path, (tmp_path / "repository").as_uri())
    first_start(settings)
    packaged = make_packaged_version(settings.output_dir)
    counts.clear()
    result = publish_version(settings, "debian-12")
    assert result.registered is not None and result.registered.version == packaged.version
    assert counts == Counter({"opens": 1})


def test_a_database_behind_the_code_is_refused_until_catalogue_migrate(tmp_path: Path, counts: Counter[str]) -> None:
    settings = make_settings(tmp_path, (tmp_path / "repository").as_uri())
    first_start(settings)
    downgrade(settings.catalogue, "0002_audit_roles_token_expiry")  # as a catalogue left by an older release
    counts.clear()
    with pytest.raises(CatalogueError) as refused:
        open_catalogue(settings)
    assert "is at revision 0002_audit_roles_token_expiry" in str(refused.value)
    assert refused.value.hint is not None and "invoke catalogue-migrate" in refused.value.hint
    assert counts["migrations"] == 0
    before, after = migrate_catalogue(settings)
    assert (before, after) == ("0002_audit_roles_token_expiry", head_revision())
    open_catalogue(settings).close()
    assert counts == Counter({"opens": 2, "migrations": 1})


def test_a_foreign_database_is_not_taken_for_a_new_one(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, (tmp_path / "repository").as_uri())
    engine = create_engine(settings.catalogue)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE something_else (id INTEGER)"))
    engine.dispose()
    with pytest.raises(CatalogueError, match="has tables but no Alembic revision: not a catalogue database"):
        open_catalogue(settings)


@pytest.fixture
def security_mirror(tmp_path: Path) -> Iterator[str]:
    """A clean Debian security mirror on 127.0.0.1 (the audit's security check reads it)."""
    folder = tmp_path / "mirror" / "dists" / "bookworm-security" / "main" / "binary-amd64"
    folder.mkdir(parents=True)
    (folder / "Packages.xz").write_bytes(security_packages({"openssl": "3.0.15-1~deb12u1"}))
    with serve_folder(tmp_path / "mirror") as url:
        yield url


def test_endorse_opens_once_and_stores_the_audit_once(
    tmp_path: Path, security_mirror: str, signing_key: DevCa, counts: Counter[str]
) -> None:
    root = tmp_path / "project" / "repository"
    root.mkdir(parents=True)
    with serve_folder(root) as url:
        settings = project(tmp_path, security_mirror, repository_public_url=url)
        built_version(settings, good_rootfs(tmp_path / "rootfs"))
        register_version(settings, (root, url), "2026.11.22")  # the first start happens here
        counts.clear()
        result = endorse_version(settings, "debian-12", "2026.11.22", VO)
    assert f"endorsed debian-12 2026.11.22 for {VO}" in result.summary()
    assert "policy audit passed" in result.summary()  # audited here, not reused
    # one open, one audit stored, no migration; the key is loaded once, to sign the VO's list
    assert counts == Counter({"opens": 1, "audits stored": 1, "key loads": 1})


def test_a_rebuild_opens_the_catalogue_once_for_its_race_check_publish_and_audit(
    tmp_path: Path, security_mirror: str, signing_key: DevCa, counts: Counter[str]
) -> None:
    """The rebuild's recipe with its audit (build resumed from the version on disk; packaging, audit,
    publish and endorse for real): the race check, the registration and the audit's storage share one
    open; endorsing opens it once more, stores nothing again and loads the key to sign the list."""
    root = tmp_path / "project" / "repository"
    root.mkdir(parents=True)
    with serve_folder(root) as url:
        settings = project(tmp_path, security_mirror, repository_public_url=url)
        built_version(settings, good_rootfs(tmp_path / "rootfs"))
        first_start(settings)
        appliance = find_appliance(settings.templates_dir, "debian-12", settings.provisioners_dir)
        stages = ResumedStages(settings)
        counts.clear()
        cooked = run_recipe(appliance, stages, version="2026.11.22", audit=True)
        assert cooked.audit is not None and cooked.audit.passed
        assert cooked.published.registered is not None and cooked.published.audit_stored
        assert counts == Counter({"opens": 1, "audits stored": 1})

        counts.clear()
        endorsed = stages.endorse(cooked.published, VO)  # the recipe's last step, for one VO
    assert f"endorsed debian-12 2026.11.22 for {VO}" in endorsed.summary()
    assert counts == Counter({"opens": 1, "key loads": 1})


@pytest.mark.slow
@pytest.mark.build
def test_release_opens_the_catalogue_once_without_migrating_or_loading_the_key(
    reference_settings: Settings,
    reference_build: tuple[Path, BuildManifest],
    tmp_path: Path,
    signing_key: DevCa,
    counts: Counter[str],
) -> None:
    """`invoke release` on the reference build (cached: packaging and publishing run for real)."""
    settings = dataclasses.replace(
        reference_settings,
        repository=(tmp_path / "repository").as_uri(),
        catalogue=f"sqlite:///{tmp_path / 'catalogue.db'}",
    )
    first_start(settings)
    counts.clear()
    result = release_appliance(settings, "debian-12")
    assert result.publish.registered is not None
    assert result.publish.registered.version == reference_build[1].version
    assert counts == Counter({"opens": 1})
