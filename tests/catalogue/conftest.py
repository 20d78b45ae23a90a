"""Catalogue fixtures: a real PostgreSQL server started here, SQLite files, real repository files.

PostgreSQL (``pgserver.py``): ``initdb`` into a temporary folder and ``pg_ctl start`` on a free
loopback port, once per test session. Each test gets its own database, copied from a template that
was migrated once (``CREATE DATABASE ... TEMPLATE``).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from pipeline.catalogue.contract import AppliancePayload, ImagePayload, PackageInfo, VersionPayload
from pipeline.catalogue.db import migrate
from pipeline.catalogue.settings import CatalogueSettings
from tests.catalogue.pgserver import free_port, postgres_server
from tests.payloads import image_payload

PUBLIC = "http://127.0.0.1:8080"


_free_port = free_port


@dataclass
class PostgresServer:
    host: str
    port: int
    template: str = "vmi_template"
    counter: itertools.count[int] = itertools.count()

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@{self.host}:{self.port}/{database}"

    def new_database(self) -> str:
        name = f"vmi_test_{os.getpid()}_{next(self.counter)}"
        engine = create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"'))
        engine.dispose()
        return self.url(name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with postgres_server() as (host, port):
        server = PostgresServer(host, port)
        engine = create_engine(server.url("postgres"), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{server.template}"'))
        engine.dispose()
        migrate(server.url(server.template))
        yield server


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every test using this runs twice: on a SQLite file and on the real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalogue.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    root = tmp_path / "repository"
    root.mkdir()
    return root


@pytest.fixture
def cat_settings(database_url: str, repository: Path) -> CatalogueSettings:
    return CatalogueSettings(database_url, PUBLIC, repository, f"{PUBLIC}/repo")


@pytest.fixture
def publish_file(repository: Path) -> Callable[..., ImagePayload]:
    """Write a real image file into the repository and describe it as an ``ImagePayload``."""

    def make(
        appliance: str = "debian-12", version: str = "2026.11.22", fmt: str = "qcow2", **kw: object
    ) -> ImagePayload:
        key = f"{appliance}/{version}/{appliance}-{version}.{fmt}"
        path = repository / key
        path.parent.mkdir(parents=True, exist_ok=True)
        data = f"{key} image bytes\n".encode() * 64
        path.write_bytes(data)
        fields: dict[str, object] = dict(
            min_cores=1,
            recommended_cores=2,
            min_ram_mb=512,
            recommended_ram_mb=2048,
            manifest={"appliance": appliance, "version": version},
            packages=(
                PackageInfo(name="openssh-server", version="1:9.2p1-2+deb12u3", arch="amd64"),
                PackageInfo(name="bash", version="5.2.15-2", arch="amd64"),
            ),
        )
        fields.update(kw)
        return image_payload(f"{PUBLIC}/repo/{key}", data, fmt, **fields)

    return make


@pytest.fixture
def version_payload(publish_file: Callable[..., ImagePayload]) -> Callable[..., VersionPayload]:
    def make(
        appliance: str = "debian-12", version: str = "2026.11.22", formats: tuple[str, ...] = ("ova", "qcow2")
    ) -> VersionPayload:
        images = tuple(publish_file(appliance, version, fmt) for fmt in formats)
        return VersionPayload(appliance=appliance, version=version, notes=f"{appliance} {version}", images=images)

    return make


APPLIANCE = AppliancePayload(
    name="debian-12", title="Debian 12 baseline", description="Minimal Debian 12", vos=("vo.example.org",)
)

PASSING_AUDIT = {
    "appliance": "debian-12",
    "checks": [
        {"id": "ssh-host-keys", "result": "pass", "evidence": "no /etc/ssh/ssh_host_* files"},
        {"id": "root-locked", "result": "pass", "evidence": "/etc/shadow: root:!*"},
    ],
}
FAILING_AUDIT = {
    "checks": [
        {"id": "ssh-host-keys", "result": "fail", "evidence": "/etc/ssh/ssh_host_ed25519_key exists"},
        {"id": "root-locked", "result": "pass", "evidence": "/etc/shadow: root:!*"},
    ]
}
WAIVED_AUDIT = {
    "checks": [
        {
            "id": "ssh-host-keys",
            "result": "fail",
            "evidence": "/etc/ssh/ssh_host_rsa_key",
            "waiver": "regenerated at boot by a unit",
        },
        {"id": "root-locked", "result": "waived", "evidence": "root:x", "reason": "site policy"},
    ]
}


@pytest.fixture(scope="session")
def dev_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA and endorser made by the endorse module (``invoke dev-ca``)."""
    from pipeline.endorse.pki import make_dev_ca

    out = tmp_path_factory.mktemp("dev-ca")
    make_dev_ca(out / "ca")
    return out / "ca"


@pytest.fixture
def signing_settings(cat_settings: CatalogueSettings, dev_ca: Path) -> CatalogueSettings:
    import dataclasses

    return dataclasses.replace(cat_settings, signing_key=dev_ca / "endorser.key", signing_cert=dev_ca / "endorser.pem")


@dataclass
class Api:
    """The app on one database, with a token per role for the authorisation tests."""

    client: Any
    settings: CatalogueSettings
    tokens: dict[str, str]
    uow: Any

    def headers(self, who: str | None) -> dict[str, str]:
        return {} if who is None else {"Authorization": f"Bearer {self.tokens[who]}"}


@pytest.fixture
def api(cat_settings: CatalogueSettings) -> Iterator[Api]:
    """Users: admin; alice owns debian-12; bob maintains nothing; mia manages vo.example.org."""
    yield from _make_api(cat_settings)


@pytest.fixture
def signing_api(signing_settings: CatalogueSettings) -> Iterator[Api]:
    yield from _make_api(signing_settings)


def _make_api(settings: CatalogueSettings) -> Iterator[Api]:
    from fastapi.testclient import TestClient

    from pipeline.catalogue import auth, services
    from pipeline.catalogue.app import create_app
    from pipeline.catalogue.db import make_engine, session_factory
    from pipeline.catalogue.models import Role
    from pipeline.catalogue.uow import UnitOfWork

    migrate(settings.database_url)
    engine = make_engine(settings.database_url)
    uow = UnitOfWork(session_factory(engine))
    tokens = {}
    for name, role in (("admin", Role.ADMIN), ("alice", Role.USER), ("bob", Role.USER), ("mia", Role.USER)):
        auth.ensure_user(uow, name, f"{name}@example.org", role)
        tokens[name] = auth.issue_token(uow, name, name, "tests").token
    auth.create_vo(uow, "admin", "vo.example.org", "the example VO")
    auth.create_vo(uow, "admin", "other.vo", "a VO nobody here manages")
    auth.set_vo_manager(uow, "admin", "vo.example.org", "mia", present=True)
    services.ensure_appliance(uow, "alice", APPLIANCE)
    services.ensure_appliance(
        uow, "admin", AppliancePayload(name="centos-7", title="Someone else's", description="not alice's", vos=())
    )
    app = create_app(settings, refresh_seconds=None)
    with TestClient(app) as client:
        yield Api(client, settings, tokens, uow)
    engine.dispose()


@dataclass
class LiveServer:
    url: str
    settings: CatalogueSettings


@pytest.fixture
def live_server(database_url: str, repository: Path, dev_ca: Path) -> Iterator[LiveServer]:
    """The app under uvicorn on a free loopback port, in a thread; its public URL is that address."""
    import threading
    import time

    import uvicorn

    from pipeline.catalogue.app import create_app

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    settings = CatalogueSettings(
        database_url,
        url,
        repository,
        f"{url}/repo",
        signing_key=dev_ca / "endorser.key",
        signing_cert=dev_ca / "endorser.pem",
    )
    migrate(database_url)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the catalogue did not start")
        time.sleep(0.05)
    yield LiveServer(url, settings)
    server.should_exit = True
    thread.join(10)


def served_image(
    server: LiveServer, name: str, version: str, fmt: str, manifest: dict[str, Any] | None = None
) -> ImagePayload:
    """A real file in the served repository, registered under its public URL (where published files live,
    wherever the server happens to listen)."""
    key = f"{name}/{version}/{name}-{version}.{fmt}"
    path = server.settings.repository_root / key  # type: ignore[operator]
    path.parent.mkdir(parents=True, exist_ok=True)
    data = f"{key}\n".encode() * 1000
    path.write_bytes(data)
    public = str(server.settings.repository_public_url).rstrip("/")
    return image_payload(f"{public}/{key}", data, fmt, manifest=manifest)
