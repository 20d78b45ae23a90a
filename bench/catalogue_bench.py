"""Catalogue request rate: every list endpoint and page next to a 2 KiB static file served by the
same `invoke serve` (uvicorn, one process) on loopback, under concurrent clients.

    .venv/bin/python bench/catalogue_bench.py [--database sqlite|postgres] [--versions 200]
                                              [--clients 1,16] [--seconds 5] [--smoke]

Seeds a throwaway database (one appliance with --versions versions of 2 images and 50 packages each,
19 more appliances, an audit and an endorsement), starts the service in its own process, then runs
each endpoint with N client threads (keep-alive sessions, plain GETs: no If-None-Match) for --seconds.
Each endpoint is paired with a run of the static file (same clients) right before it; prints both
rates, their ratio (target: >= 0.5x, issue 15), latency percentiles, the load average and the core
count before and after; nothing is asserted.
``--smoke`` is a few seconds on tiny sizes (CI runs it so the bench cannot rot).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
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
from pipeline.catalogue.contract import AppliancePayload, ImagePayload, PackageInfo, VersionPayload  # noqa: E402
from pipeline.catalogue.db import make_engine, migrate, session_factory  # noqa: E402
from pipeline.catalogue.inprocess import make_context  # noqa: E402
from pipeline.catalogue.models import Role  # noqa: E402
from pipeline.catalogue.schemas import AuditIn  # noqa: E402
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
    """Versions registered as a publish to an S3 repository would (URLs under its public base, unchecked)."""
    settings = dataclasses.replace(settings, repository_root=None)
    engine = make_engine(settings.database_url)
    uow = UnitOfWork(session_factory(engine))
    auth.ensure_user(uow, "admin", "admin@example.org", Role.ADMIN)
    for i in range(20):
        name = "debian-12" if i == 0 else f"appliance-{i:02d}"
        services.ensure_appliance(
            uow, "admin", AppliancePayload(name=name, title=f"Appliance {i}", description="for the bench", vos=(VO,))
        )
    packages = tuple(PackageInfo(name=f"pkg{i}", version=f"1.{i}", arch="amd64") for i in range(50))
    for v in range(versions):
        version = f"2026.{v // 28 + 1}.{v % 28 + 1}"
        images = tuple(
            ImagePayload(
                uri=f"{settings.repository_public_url}/debian-12/{version}/debian-12-{version}.{fmt}",
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
        services.register_version(
            uow, "admin", VersionPayload(appliance="debian-12", version=version, notes="bench", images=images), settings
        )
    services.store_audit(uow, "admin", "debian-12", version, AuditIn.model_validate(AUDIT))
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
        # a trial on this machine: serve refuses to sign lists for a loopback public URL without --local-demo
        argv = [sys.executable, "-m", "invoke", "serve", "--port", str(port), "--local-demo"]
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


def machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load_avg = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{cores} cores, load average {load_avg}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--versions", type=int, default=200)
    parser.add_argument("--clients", default="1,16")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.versions, args.clients, args.seconds = 3, "1,2", 0.3
    base = Path(os.environ.get("TMPDIR", ROOT / "work"))
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="catalogue-bench-", dir=base) as tmp:
        work = Path(tmp)
        (work / "repository").mkdir()
        (work / "repository" / "static-2k.bin").write_bytes(os.urandom(2048))
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
            took = time.perf_counter() - started
            print(f"database: {args.database}; seeded {args.versions} versions, 20 appliances in {took:.1f} s")
            print(f"machine before: {machine()}")
            with serve(settings, port, work / "serve.log") as base_url:
                static_url = f"{base_url}/repo/static-2k.bin"
                endpoints = {
                    "version list (50/page)": f"{base_url}/api/v1/appliances/debian-12/versions?limit=50",
                    "image list (100/page)": f"{base_url}/api/v1/images?limit=100",
                    "appliance list": f"{base_url}/api/v1/appliances",
                    "VO list": f"{base_url}/api/v1/vos",
                    "VO list history": f"{base_url}/api/v1/vos/{VO}/image-lists",
                    "VO image.list (signed)": f"{base_url}/vo/{VO}/image.list",
                    "page: appliances": f"{base_url}/",
                    "page: versions": f"{base_url}/appliances/debian-12",
                    "page: VOs": f"{base_url}/vos",
                    "page: VO": f"{base_url}/vos/{VO}",
                }
                # paired runs: the static file right before each endpoint, so load drift hits both alike
                head = ("endpoint", "clients", "requests", "req/s", "static/s", "x static", "p50 ms", "p95 ms")
                print(f"{head[0]:24} " + " ".join(f"{h:>8}" for h in head[1:]))
                requests.get(static_url, timeout=30).raise_for_status()
                worst = float("inf")
                for name, target in endpoints.items():
                    requests.get(target, timeout=30).raise_for_status()  # warm up, and fail loudly
                    for clients in (int(c) for c in args.clients.split(",")):
                        s_n, s_errors, _ = load(static_url, clients, args.seconds)
                        n, errors, lat = load(target, clients, args.seconds)
                        if errors or s_errors:
                            raise SystemExit(f"{name}: {errors} requests failed (static file: {s_errors})")
                        rate, static = n / args.seconds, s_n / args.seconds
                        ratio = rate / static if static else 0.0
                        worst = min(worst, ratio)
                        lat.sort()
                        p50 = statistics.median(lat) * 1000 if lat else 0.0
                        p95 = lat[max(int(len(lat) * 0.95) - 1, 0)] * 1000 if lat else 0.0
                        row = (clients, n, f"{rate:.1f}", f"{static:.1f}", f"{ratio:.2f}", f"{p50:.1f}", f"{p95:.1f}")
                        print(f"{name:24} " + " ".join(f"{v:>8}" for v in row), flush=True)
            print(f"machine after: {machine()}")
            print(f"worst list endpoint: {worst:.2f}x the static file (target >= 0.5x)")


if __name__ == "__main__":
    main()
