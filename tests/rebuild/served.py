"""A catalogue served over HTTP (the real app under uvicorn on loopback, in a thread) for the rebuild tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipeline.catalogue import auth
from pipeline.catalogue.contract import ImagePayload, PackageInfo, VersionPayload
from pipeline.catalogue.db import make_engine, migrate, session_factory
from pipeline.catalogue.settings import CatalogueSettings
from pipeline.catalogue.uow import UnitOfWork
from pipeline.fsutil import Digests
from pipeline.manifest import BuildManifest
from tests.catalogue.pgserver import free_port


@dataclass(frozen=True)
class Served:
    url: str
    token: str  # the local admin's
    database_url: str
    repository_public_url: str | None


@contextmanager
def served_catalogue(
    database: Path,
    repository: Path | None,
    signing: tuple[Path, Path] | None = None,
    vos: tuple[str, ...] = (),
    repository_public_url: str | None = None,
) -> Iterator[Served]:
    """The catalogue app under uvicorn; ``repository``: the file repository it serves under /repo/ (and
    hashes what is registered from it), else ``repository_public_url``: where the images it registers
    live (an S3 bucket's URL); ``signing`` (key, cert) lets it sign VO image lists; ``vos`` exist."""
    import uvicorn

    from pipeline.catalogue.app import create_app

    database_url = f"sqlite:///{database}"
    migrate(database_url)
    engine = make_engine(database_url)
    uow = UnitOfWork(session_factory(engine))
    admin = auth.ensure_local_admin(uow)
    token = auth.issue_token(uow, admin, admin, "rebuild tests").token
    for vo in vos:
        auth.create_vo(uow, admin, vo, f"{vo} (tests)")
        auth.set_vo_manager(uow, admin, vo, admin, present=True)
    engine.dispose()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    key, cert = signing or (None, None)
    public = f"{url}/repo" if repository is not None else repository_public_url
    settings = CatalogueSettings(database_url, url, repository, public, signing_key=key, signing_cert=cert)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the catalogue did not start")
        time.sleep(0.05)
    try:
        yield Served(url, token, database_url, public)
    finally:
        server.should_exit = True
        thread.join(10)


def payload_of(m: BuildManifest, uri: str, digests: Digests | None = None) -> VersionPayload:
    """A registration of ``m`` with one qcow2 image at ``uri`` (made-up digests unless given: a URI
    outside a served file repository, which the catalogue does not hash)."""
    d = digests or Digests(1024, "d" * 64, "c" * 128)
    image = ImagePayload(
        uri=uri,
        format="qcow2",
        size=d.size,
        sha512=d.sha512,
        sha256=d.sha256,
        arch=m.arch,
        os_family="linux",
        os_name="Debian",
        os_version="12",
        manifest=m.to_dict(),
        packages=tuple(PackageInfo(name=p.name, version=p.version, arch=p.arch) for p in m.packages),
    )
    return VersionPayload(appliance=m.appliance, version=m.version, notes=f"{m.appliance} {m.version}", images=(image,))
