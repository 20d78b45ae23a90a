"""Real parts for the publish tests: moto's S3 server on loopback, real files, a real manifest.

Nothing inside boto3 or the pipeline is patched; faults come from outside (a misbehaving proxy,
SIGKILL of a child process).
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from pipeline.fsutil import hash_file
from pipeline.manifest import Artifact, BaseRef, BuildManifest, InstalledPackage
from pipeline.settings import Settings

from .faultproxy import FaultProxy

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}
MiB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server as a separate process on a free loopback port."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **S3_ENV},
        )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(autouse=True)
def _s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, v)


@pytest.fixture
def s3(moto_endpoint: str) -> object:
    """A plain boto3 client on moto, for the tests' own look at the bucket (never the code under test)."""
    return boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        config=Config(request_checksum_calculation="when_required", response_checksum_validation="when_required"),
    )


@pytest.fixture
def bucket(s3: object) -> str:
    name = f"vmi-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)  # type: ignore[attr-defined]
    return name


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[FaultProxy]:
    p = FaultProxy(moto_endpoint).start()
    yield p
    p.stop()


def make_settings(tmp: Path, repository: str, endpoint: str | None = None, catalogue: str | None = None) -> Settings:
    return Settings(
        root=ROOT,
        output_dir=tmp / "output",
        work_dir=tmp / "work",
        cache_dir=tmp / "cache",
        repository=repository,
        repository_public_url="http://127.0.0.1:8080/repo",
        catalogue=catalogue or f"sqlite:///{tmp / 'catalogue.db'}",
        catalogue_public_url="http://127.0.0.1:8080",
        s3_endpoint_url=endpoint,
        s3_profile=None,
        accel="auto",  # what users run: the probe decides
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes `invoke` in a child process use ``settings``."""
    env = {
        **os.environ,
        **S3_ENV,
        "VMI_OUTPUT_DIR": str(settings.output_dir),
        "VMI_WORK_DIR": str(settings.work_dir),
        "VMI_CACHE_DIR": str(settings.cache_dir),
        "VMI_REPOSITORY": " ".join((settings.repository, *settings.mirror_repositories)),
        "VMI_REPOSITORY_PUBLIC_URL": settings.repository_public_url,
        "VMI_CATALOGUE": settings.catalogue,
        "VMI_CATALOGUE_PUBLIC_URL": settings.catalogue_public_url,
        "VMI_ACCEL": settings.accel,
    }
    if settings.s3_endpoint_url:
        env["VMI_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    return env


@dataclass(frozen=True)
class PackagedVersion:
    appliance: str
    version: str
    directory: Path
    manifest: BuildManifest


def _pseudo_random(size: int, seed: str) -> bytes:
    """Incompressible but reproducible bytes (so two 'machines' can package identical files)."""
    out = bytearray()
    block = hashlib.sha512(seed.encode()).digest()
    while len(out) < size:
        block = hashlib.sha512(block).digest()
        out += block * 64
    return bytes(out[:size])


def make_packaged_version(
    output_dir: Path,
    appliance: str = "debian-12",
    version: str = "2026.11.22",
    ova_size: int = 3 * MiB,
    qcow2_size: int = 2 * MiB,
    seed: str = "",
) -> PackagedVersion:
    """A version folder as `invoke package` leaves it: OVA, qcow2, SHA256SUMS/SHA512SUMS, manifest."""
    vdir = output_dir / appliance / version
    vdir.mkdir(parents=True, exist_ok=True)
    files = {
        f"{appliance}-{version}.ova": ("ova", "ova", ova_size),
        f"{appliance}-{version}.qcow2": ("qcow2", "qcow2", qcow2_size),
    }
    artifacts = []
    for name, (role, fmt, size) in files.items():
        (vdir / name).write_bytes(_pseudo_random(size, seed + name))
        artifacts.append(Artifact.from_digests(name, role, fmt, hash_file(vdir / name), virtual_size=None))
    sums256 = "".join(f"{a.sha256}  {a.name}\n" for a in artifacts)
    sums512 = "".join(f"{a.sha512}  {a.name}\n" for a in artifacts)
    for name, role, text in (("SHA256SUMS", "sha256sums", sums256), ("SHA512SUMS", "sha512sums", sums512)):
        (vdir / name).write_text(text)
        artifacts.append(Artifact.from_digests(name, role, "text", hash_file(vdir / name)))
    (vdir / "build").mkdir(exist_ok=True)
    disk = vdir / "build" / f"{appliance}-{version}.qcow2"
    disk.write_bytes(b"build disk, never published")
    artifacts.insert(0, Artifact.from_digests(f"build/{disk.name}", "build-disk", "qcow2", hash_file(disk)))
    manifest = BuildManifest(
        appliance=appliance,
        version=version,
        created="2026-11-22T01:02:03Z",
        inputs_digest="a" * 64,
        inputs={"template": "b" * 64},
        git_commit=None,
        tools={"packer": "1.6.6", "qemu-img": "7.2.0"},
        accel="tcg",
        os={"family": "linux", "name": "Debian", "version": "12"},
        arch="x86_64",
        base=BaseRef("bootstrap", "bookworm http://deb.debian.org/debian", "c" * 64),
        packages=(
            InstalledPackage("bash", "5.2.15-2+b7", "amd64"),
            InstalledPackage("cloud-init", "22.4.2-1+deb12u1", "all"),
        ),
        artifacts=tuple(artifacts),
        timings={"build": 1.0},
    )
    manifest.save(vdir)
    return PackagedVersion(appliance, version, vdir, manifest)


def run_invoke(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "invoke"), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def spawn() -> Iterator[Callable[[list[str], dict[str, str], Path], subprocess.Popen[bytes]]]:
    """Start `invoke ARGS` in the background with its output in a log file; killed at teardown if still alive."""
    children: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            child = subprocess.Popen(
                [str(VENV_BIN / "invoke"), *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        children.append(child)
        return child

    yield start
    for child in children:
        if child.poll() is None:
            child.kill()
            child.wait(30)
