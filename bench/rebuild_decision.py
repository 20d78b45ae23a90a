"""The no-op `invoke rebuild` decision for 20 appliances (target: under a second).

Sets up a throwaway project under work/bench-rebuild/: the real debian-12 appliance plus 19 layered
appliances made with `new-appliance` (some layered on layered ones), each with a newest version whose
manifest has the inputs digest a build would have now and ~this machine's package list at the
archive's current versions (so nothing needs a rebuild). Then times the decision as `invoke rebuild
--dry-run` makes it: load definitions, inputs digests (the build's own function), newest manifests,
package comparison against the live bookworm, bookworm-updates and bookworm-security indexes.

Prints: the first download and parse of the indexes, a decision that revalidates them with the
mirror (conditional GETs; the first decision of the process, so it also pays for loading the
schemas), and the daily no-op case (indexes fresh in the cache) five times: median, best, worst.
The machine is shared, so the core count and load average are printed too.

--smoke: 3 appliances, 300 made-up packages, and the three indexes served by a loopback mirror
(small Packages.xz files written here): the same code paths in a few seconds, without the network.

Usage: .venv/bin/python bench/rebuild_decision.py [--smoke]
"""

from __future__ import annotations

import argparse
import functools
import lzma
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from pipeline.appliance import build_order, load_all  # noqa: E402
from pipeline.manifest import Artifact, BaseRef, BuildManifest, InstalledPackage  # noqa: E402
from pipeline.rebuild.archive import ArchiveIndex, newer, parse_source  # noqa: E402
from pipeline.rebuild.inputs import current_inputs  # noqa: E402
from pipeline.rebuild.plan import make_plan, select  # noqa: E402
from pipeline.rebuild.scaffold import scaffold_appliance  # noqa: E402
from pipeline.settings import Settings, load_settings  # noqa: E402

APPLIANCES = 20
VERSION = "2026.11.20"
SOURCES = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
SMOKE_APPLIANCES = 3
SMOKE_PACKAGES = 300


def machine() -> str:
    """Cores and load average, printed with every set of figures (the machine is shared)."""
    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    return f"machine: {os.cpu_count()} cores, load average {load} (1/5/15 min)"


@contextmanager
def loopback_mirror(folder: Path) -> Iterator[tuple[str, ...]]:
    """Three small suites served from ``folder`` on a free loopback port; yields their ``deb`` lines.

    Every package is in bookworm; a tenth have a newer version in bookworm-updates or -security, so
    the comparison does real work; the installed list (``smoke_packages``) is at the newest versions."""
    suites = {("debian", "bookworm"): 0, ("debian", "bookworm-updates"): 1, ("debian-security", "bookworm-security"): 2}
    for (dist, suite), n in suites.items():
        lines = []
        for i in range(SMOKE_PACKAGES):
            if n == 0 or i % 10 == n:
                lines.append(f"Package: pkg-{i:03d}\nVersion: 1.{i}-{n + 1}\nArchitecture: amd64\n")
        index = folder / dist / "dists" / suite / "main" / "binary-amd64" / "Packages.xz"
        index.parent.mkdir(parents=True)
        index.write_bytes(lzma.compress("\n".join(lines).encode()))

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield tuple(f"deb {base}/{dist} {suite} main" for dist, suite in suites)
    finally:
        server.shutdown()
        server.server_close()


def smoke_packages(archive: ArchiveIndex, sources: tuple[str, ...]) -> tuple[InstalledPackage, ...]:
    """Every package of the loopback mirror, at its newest version there (a patched system)."""
    newest: dict[str, str] = {}
    for line in sources:
        src = parse_source(line)
        assert src is not None
        for name, version in archive.index(src, src.index_urls("amd64")[0]).versions.items():
            if name not in newest or newer(version, newest[name]):
                newest[name] = version
    return tuple(InstalledPackage(name, version, "amd64") for name, version in sorted(newest.items()))


def project(root: Path, appliances: int = APPLIANCES) -> Settings:
    shutil.rmtree(root, ignore_errors=True)
    (root / "packer_templates").mkdir(parents=True)
    shutil.copytree(ROOT / "packer_templates" / "debian-12", root / "packer_templates" / "debian-12")
    shutil.copytree(ROOT / "packer_templates" / "_shared", root / "packer_templates" / "_shared")
    shutil.copytree(ROOT / "provisioners", root / "provisioners")
    config = yaml.safe_load((ROOT / "invoke.yaml").read_text())["vmi"]
    settings = load_settings(config, root, environ={})
    names = ["debian-12"]
    for i in range(1, appliances):
        base = names[(i - 1) // 3]  # a tree: some appliances are layered on layered ones
        name = f"community-{i:02d}"
        scaffold_appliance(settings, name, base)
        names.append(name)
    return settings


def current_packages(archive: ArchiveIndex) -> tuple[InstalledPackage, ...]:
    """This machine's installed packages, at the newest version the archive has (a patched system)."""
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}\t${Architecture}\n"], capture_output=True, text=True, check=True
    ).stdout
    newest: dict[str, str] = {}
    for line in SOURCES:
        src = parse_source(line)
        assert src is not None
        for name, version in archive.index(src, src.index_urls("amd64")[0]).versions.items():
            newest.setdefault(name, version)
            if newest[name] != version:
                from debian.debian_support import Version

                if Version(version) > Version(newest[name]):
                    newest[name] = version
    pkgs = [
        InstalledPackage(name, newest[name], arch)
        for name, arch in (ln.split("\t") for ln in out.splitlines())
        if name in newest and arch in ("amd64", "all")
    ]
    return tuple(pkgs)


def write_manifests(
    settings: Settings, packages: tuple[InstalledPackage, ...], sources: tuple[str, ...] = SOURCES
) -> None:
    apps = load_all(settings.templates_dir, settings.provisioners_dir)
    inputs_of = current_inputs(settings)
    for a in build_order(apps.values()):  # a layered appliance's digest reads its base's manifest
        digest, components = inputs_of(a)
        if a.base.appliance:
            base = BaseRef("appliance", f"{a.base.appliance}@{VERSION}", "sha256:" + "1" * 64, sources)
        else:
            base = BaseRef("bootstrap", "bookworm http://deb.debian.org/debian", "sha256:" + "0" * 64, sources)
        disk = Artifact(f"build/{a.name}-{VERSION}.qcow2", "build-disk", "qcow2", 1, "2" * 64, "3" * 128)
        manifest = BuildManifest(
            appliance=a.name,
            version=VERSION,
            created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            inputs_digest=digest,
            inputs=dict(components),
            git_commit=None,
            tools={},
            accel="tcg",
            os={"family": "linux", "name": "Debian", "version": "12"},
            arch="x86_64",
            base=base,
            packages=packages,
            artifacts=(disk,),
            timings={},
        )
        folder = settings.version_dir(a.name, VERSION)
        folder.mkdir(parents=True, exist_ok=True)
        manifest.save(folder)


def decide_once(settings: Settings, fresh_seconds: float, inputs_of=None) -> tuple[float, list[str]]:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    apps = select(settings, None)
    archive = ArchiveIndex(settings.cache_dir / "archive", fresh_seconds=fresh_seconds)
    plan = make_plan(settings, apps, inputs_of or current_inputs(settings), archive, datetime.now(UTC))
    return time.perf_counter() - start, plan.to_rebuild


def measure(
    settings: Settings, packages: tuple[InstalledPackage, ...], fetch: float, sources: tuple[str, ...]
) -> float:
    """Write the manifests, then time the decisions; prints the rows and returns the no-op median."""
    write_manifests(settings, packages, sources)
    count = len(select(settings, None))
    print(f"{count} appliances, {len(packages)} packages each, indexes: {', '.join(sources)}")
    print(machine())
    print(f"  indexes downloaded and parsed (first run ever): {fetch:.2f} s")

    # cold for the decision: index files cached but stale -> conditional GETs to the mirror
    cold, stale = decide_once(settings, fresh_seconds=0)
    print(f"  decision, indexes revalidated with the mirror: {cold:.3f} s  (rebuild: {stale or 'nothing'})")
    runs = sorted(decide_once(settings, fresh_seconds=600)[0] for _ in range(5))
    warm, stale = statistics.median(runs), decide_once(settings, 600)[1]
    print(f"  decision, the no-op daily case (indexes fresh), 5 runs: median {warm:.3f} s, best {runs[0]:.3f} s,"
          f" worst {runs[-1]:.3f} s  (rebuild: {stale or 'nothing'})")  # fmt: skip
    if stale:
        raise SystemExit(f"the bench's manifests are meant to be up to date, yet the decision rebuilds {stale}")
    return warm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="3 appliances, a loopback mirror, no network")
    args = parser.parse_args()
    if args.smoke:
        settings = project(ROOT / "work" / "bench-rebuild-smoke", SMOKE_APPLIANCES)
        try:
            with loopback_mirror(settings.root / "mirror") as sources:
                t = time.perf_counter()
                packages = smoke_packages(ArchiveIndex(settings.cache_dir / "archive"), sources)
                measure(settings, packages, time.perf_counter() - t, sources)
        finally:
            shutil.rmtree(settings.root, ignore_errors=True)
        return

    settings = project(ROOT / "work" / "bench-rebuild")
    shutil.rmtree(settings.cache_dir / "archive", ignore_errors=True)
    t = time.perf_counter()
    packages = current_packages(ArchiveIndex(settings.cache_dir / "archive"))
    warm = measure(settings, packages, time.perf_counter() - t, SOURCES)
    print(f"target: under 1 s for the no-op decision: {'met' if warm < 1 else 'NOT met'} ({warm:.3f} s)")
    print(f"  (after: {machine()})")


if __name__ == "__main__":
    main()
