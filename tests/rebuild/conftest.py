"""Fixtures for the rebuild tests: a recorded Debian mirror on loopback, projects and manifests in tmp_path."""

from __future__ import annotations

import functools
import http.server
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from pipeline.manifest import BaseRef, BuildManifest, InstalledPackage
from pipeline.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"
DIGEST_A = "a" * 64


@dataclass
class Mirror:
    """A static HTTP server over a copy of ``data/mirror`` that records each request and its headers."""

    root: Path
    url: str
    requests: list[tuple[str, dict[str, str], int]] = field(default_factory=list)

    def sources(self) -> tuple[str, ...]:
        return (
            f"deb {self.url}/debian bookworm main",
            f"deb {self.url}/debian bookworm-updates main",
            f"deb {self.url}/debian-security bookworm-security main",
        )


@pytest.fixture(autouse=True)
def _not_on_a_ci_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite itself runs in CI (CI=true), where `rebuild` refuses a catalogue that does not exist
    (history.open_history); the tests choose their catalogue, and test that refusal explicitly."""
    monkeypatch.delenv("CI", raising=False)


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    root = tmp_path / "mirror"
    shutil.copytree(DATA / "mirror", root)
    log: list[tuple[str, dict[str, str], int]] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def send_response(self, code: int, message: str | None = None) -> None:
            log.append((self.path, dict(self.headers.items()), code))
            super().send_response(code, message)

        def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Mirror(root, f"http://127.0.0.1:{server.server_address[1]}", log)
    finally:
        server.shutdown()
        server.server_close()


def make_settings(root: Path, work: Path | None = None) -> Settings:
    """Settings for a project checkout at ``root`` with everything else under ``root``."""
    config = yaml.safe_load((ROOT / "invoke.yaml").read_text())["vmi"]
    return load_settings(config, root, environ={"VMI_WORK_DIR": str(work)} if work else {})


@pytest.fixture
def short_work() -> Iterator[Path]:
    """A scratch folder with a short path: Packer's plugin sockets live there, and a unix socket path
    longer than 108 bytes makes `packer validate` skip its checks and still exit 0."""
    base = ROOT / "work" / "t"
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def project(tmp_path: Path, short_work: Path) -> Settings:
    """A project checkout in tmp_path: the real debian-12 appliance and provisioners."""
    root = tmp_path / "project"
    (root / "packer_templates").mkdir(parents=True)
    shutil.copytree(ROOT / "packer_templates" / "debian-12", root / "packer_templates" / "debian-12")
    shutil.copytree(ROOT / "packer_templates" / "_shared", root / "packer_templates" / "_shared")
    shutil.copytree(ROOT / "provisioners", root / "provisioners")
    return make_settings(root, short_work)


def manifest(
    appliance: str,
    version: str,
    *,
    created: str = "2026-11-20T10:00:00Z",
    inputs_digest: str = DIGEST_A,
    packages: tuple[tuple[str, str], ...] = (),
    sources: tuple[str, ...] = (),
    base: BaseRef | None = None,
    arch: str = "x86_64",
) -> BuildManifest:
    return BuildManifest(
        appliance=appliance,
        version=version,
        created=created,
        inputs_digest=inputs_digest,
        inputs={"template": inputs_digest},
        git_commit=None,
        tools={"packer": "1.6.6"},
        accel="tcg",
        os={"family": "linux", "name": "Debian", "version": "12"},
        arch=arch,
        base=base or BaseRef("bootstrap", "bookworm http://deb.debian.org/debian", "0" * 64, sources),
        packages=tuple(InstalledPackage(n, v, "amd64") for n, v in packages),
        artifacts=(),
        timings={},
    )


def save(settings: Settings, m: BuildManifest) -> Path:
    d = settings.version_dir(m.appliance, m.version)
    d.mkdir(parents=True, exist_ok=True)
    path = d / "manifest.json"
    path.write_text(m.to_json())
    BuildManifest.load(d)  # what the rebuild reads must pass the schema
    return path
