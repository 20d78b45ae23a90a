"""Catalogue request rate: the version list, the image list and the signed VO image list under
concurrent clients, against `invoke serve` (uvicorn, one process) on loopback.

    .venv/bin/python bench/catalogue_bench.py [--database sqlite|postgres] [--versions 200]
                                              [--clients 1,4,16] [--seconds 5]

Seeds a throwaway database (one appliance with --versions versions of 2 images and 50 packages each,
19 more appliances, an audit and an endorsement), starts the service in its own process, then runs
each endpoint with N client threads (keep-alive sessions) for --seconds. Prints requests/s and
latency percentiles; nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.catalogue import auth, endorsements, services  # noqa: E402
from pipeline.catalogue.client import make_context  # noqa: E402
from pipeline.catalogue.contract import AppliancePayload, ImagePayload, PackageInfo, VersionPayload  # noqa: E402
from pipeline.catalogue.db import make_engine, migrate, session_factory  # noqa: E402
from pipeline.catalogue.models import Role  # noqa: E402
from pipeline.catalogue.settings import CatalogueSettings  # noqa: E402
from pipeline.catalogue.uow import UnitOfWork  # noqa: E402
from pipeline.endorse.pki import make_dev_ca  # noqa: E402
from tests.catalogue.pgserver import free_port, postgres_server  # noqa: E402

VO = "vo.example.org"
AUDIT = {"checks": [{"id": "ssh-host-keys", "result": "pass", "evidence": "none"}]}


@contextlib.contextmanager
def database(kind: str, work: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{work / 'catalogue.db'}"
        return
    with postgres_server() as (host, port):
        from sqlalchemy import create_engine, text

        engine = create_engine(f"postgresql+psycopg://postgres@{host}:{port}/postgres", isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("CREATE DATABASE bench"))
        engine.dispose()
        yield f"postgresql+psycopg://postgres@{host}:{port}/bench"


def seed(settings: CatalogueSettings, versions: int) -> None:
    engine = make_engine(settings.database_url)
    uow = UnitOfWork(session_factory(engine))
    auth.ensure_user(uow, "admin", "admin@example.org", Role.ADMIN)
    for i in range(20):
        name = "debian-12" if i == 0 else f"appliance-{i:02d}"
        services.ensure_appliance(uow, "admin", AppliancePayload(name, f"Appliance {i}", "for the bench", (VO,)))
    packages = tuple(PackageInfo(f"pkg{i}", f"1.{i}", "amd64") for i in range(50))
    for v in range(versions):
        version = f"2026.{v // 28 + 1}.{v % 28 + 1}"
        images = tuple(
            ImagePayload(
                uri=f"s3://bench/debian-12/{version}/debian-12-{version}.{fmt}",
                format=fmt,
                size=1_000_000 + v,
                sha512=hashlib.sha512(f"{version}{fmt}".encode()).hexdigest(),
                sha256=hashlib.sha256(f"{version}{fmt}".encode()).hexdigest(),
                arch="x86_64",
                os_family="linux",
                os_name="Debian",
                os_version="12",
                packages=packages,
            )
            for fmt in ("ova", "qcow2")
        )
        services.register_version(uow, "admin", VersionPayload("debian-12", version, "bench", images), settings)
    services.store_audit(uow, "admin", "debian-12", version, AUDIT)
    endorsements.endorse(uow, "admin", "debian-12", version, VO, make_context(settings))
    engine.dispose()


@contextlib.contextmanager
def serve(settings: CatalogueSettings, port: int, log: Path) -> Iterator[str]:
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "VMI_CATALOGUE": settings.database_url,
        "VMI_CATALOGUE_PUBLIC_URL": url,
        "VMI_REPOSITORY": f"file://{settings.repository_root}",
        "VMI_REPOSITORY_PUBLIC_URL": f"{url}/repo",
        "VMI_SIGNING_KEY": str(settings.signing_key),
        "VMI_SIGNING_CERT": str(settings.signing_cert),
    }
    with open(log, "wb") as out:
        argv = [sys.executable, "-m", "invoke", "serve", "--port", str(port)]
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/api/v1/openapi.json", timeout=10).ok:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the catalogue did not start:\n" + log.read_text())
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(20)


def load(url: str, clients: int, seconds: float) -> tuple[int, int, list[float]]:
    """Requests done, errors, latencies (s) of ``clients`` threads hammering ``url`` for ``seconds``."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        session = requests.Session()
        mine: list[float] = []
        bad = 0
        while time.monotonic() < deadline:
            start = time.perf_counter()
            r = session.get(url, timeout=30)
            mine.append(time.perf_counter() - start)
            bad += r.status_code != 200
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(latencies), errors[0], latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--versions", type=int, default=200)
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    base = Path(os.environ.get("TMPDIR", ROOT / "work"))
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="catalogue-bench-", dir=base) as tmp:
        work = Path(tmp)
        (work / "repository").mkdir()
        make_dev_ca(work / "ca")
        with database(args.database, work) as url:
            port = free_port()
            settings = CatalogueSettings(
                url,
                f"http://127.0.0.1:{port}",
                work / "repository",
                f"http://127.0.0.1:{port}/repo",
                signing_key=work / "ca" / "endorser.key",
                signing_cert=work / "ca" / "endorser.pem",
            )
            migrate(url)
            started = time.perf_counter()
            seed(settings, args.versions)
            took, load = time.perf_counter() - started, ", ".join(f"{x:.1f}" for x in os.getloadavg())
            print(f"database: {args.database}; seeded {args.versions} versions in {took:.1f} s; load average {load}")
            with serve(settings, port, work / "serve.log") as base_url:
                endpoints = {
                    "version list (50/page)": f"{base_url}/api/v1/appliances/debian-12/versions?limit=50",
                    "image list (100/page)": f"{base_url}/api/v1/images?limit=100",
                    "VO image.list (signed)": f"{base_url}/vo/{VO}/image.list",
                }
                head = ("endpoint", "clients", "requests", "req/s", "p50 ms", "p95 ms", "errors")
                print(f"{head[0]:24} " + " ".join(f"{h:>8}" for h in head[1:]))
                for name, target in endpoints.items():
                    requests.get(target, timeout=30)  # warm up
                    for clients in (int(c) for c in args.clients.split(",")):
                        n, errors, lat = load(target, clients, args.seconds)
                        lat.sort()
                        p50 = statistics.median(lat) * 1000
                        p95 = lat[int(len(lat) * 0.95) - 1] * 1000
                        row = (clients, n, f"{n / args.seconds:.1f}", f"{p50:.1f}", f"{p95:.1f}", errors)
                        print(f"{name:24} " + " ".join(f"{v:>8}" for v in row))


if __name__ == "__main__":
    main()
