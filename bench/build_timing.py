"""Time a real build of an appliance per step, and the pipeline's own overhead over Packer.

    .venv/bin/python bench/build_timing.py [--appliance debian-12 --appliance debian-13] [--cold] [--output DIR]
    .venv/bin/python bench/build_timing.py --smoke

Builds each appliance in turn (default: debian-12 and debian-13, the two baselines), then prints their
step times side by side.

--cold empties the bootstrap/disk cache first (a build from nothing); by default the cache is kept
and only the Packer build is redone (--force). Prints the per-step table with the machine's core
count and load average, and appends a JSON line to bench/results/build_timing.jsonl.

--smoke builds nothing: it prints the step times recorded in existing manifests side by side, one
column per appliance (its newest version): the reference build in ``$VMI_TEST_OUTPUT`` (default
work/test-output), else two small fixture manifests written and read back through the manifest
schema here (made-up times: they prove the table, not the speed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.manifest import Artifact, BaseRef, BuildManifest, list_versions  # noqa: E402
from pipeline.settings import Settings  # noqa: E402

# the steps a build records (pipeline/builder: step() timings and Packer's phases), in build order
STEPS = (
    ("base", "bootstrap + base disk"),
    ("packer.boot", "packer: boot until SSH"),
    ("packer.provision", "packer: provisioning"),
    ("packer.shutdown", "packer: shutdown"),
    ("packer.compact", "packer: compact disk"),
    ("packer", "packer wall time"),
    ("manifest", "manifest (package list, sha256/sha512)"),
    ("total", "whole build (wall)"),
)


def machine() -> str:
    """Cores and load average, printed with every set of figures (the machine is shared)."""
    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    return f"machine: {os.cpu_count()} cores, load average {load} (1/5/15 min)"


def newest_manifests(output: Path) -> list[BuildManifest]:
    """The newest version's manifest of every appliance under ``output`` (``<app>/<version>/``)."""
    found = []
    for folder in sorted(p for p in output.iterdir() if p.is_dir()) if output.is_dir() else []:
        versions = [v for v in list_versions(folder) if (folder / v / "manifest.json").is_file()]
        if versions:
            found.append(BuildManifest.load(folder / versions[-1]))
    return found


def fixture_manifests(folder: Path) -> list[BuildManifest]:
    """Small manifests (the two baselines, one appliance layered on one), saved and loaded for real."""
    made = []
    for name, base, times in (
        ("debian-12", BaseRef("bootstrap", "bookworm http://deb.debian.org/debian", "sha256:" + "0" * 64),
         {"base": 40.0, "packer.boot": 30.0, "packer.provision": 120.0, "packer.shutdown": 5.0,
          "packer.compact": 10.0, "packer": 170.0, "manifest": 4.0, "total": 216.0}),
        ("debian-13", BaseRef("bootstrap", "trixie http://deb.debian.org/debian", "sha256:" + "5" * 64),
         {"base": 50.0, "packer.boot": 35.0, "packer.provision": 110.0, "packer.shutdown": 5.0,
          "packer.compact": 10.0, "packer": 165.0, "manifest": 4.0, "total": 221.0}),
        ("fixture-layered", BaseRef("appliance", "debian-12@2026.11.22", "sha256:" + "1" * 64),
         {"base": 2.0, "packer.boot": 25.0, "packer.provision": 60.0, "packer.shutdown": 5.0,
          "packer.compact": 8.0, "packer": 100.0, "manifest": 4.0, "total": 107.0}),
    ):  # fmt: skip
        manifest = BuildManifest(
            appliance=name,
            version="2026.11.22",
            created="2026-11-22T00:00:00Z",
            inputs_digest="2" * 64,
            inputs={},
            git_commit=None,
            tools={},
            accel="tcg",
            os={"family": "linux", "name": "Debian", "version": "12"},
            arch="x86_64",
            base=base,
            packages=(),
            artifacts=(Artifact(f"build/{name}-2026.11.22.qcow2", "build-disk", "qcow2", 1, "3" * 64, "4" * 128),),
            timings=times,
        )
        version_dir = folder / name / manifest.version
        version_dir.mkdir(parents=True)
        manifest.save(version_dir)
        made.append(BuildManifest.load(version_dir))
    return made


def side_by_side(manifests: list[BuildManifest]) -> None:
    """One row per step, one column per appliance; steps a manifest lacks print as "-"."""
    known = {key for key, _ in STEPS}
    extra = sorted({k for m in manifests for k in m.timings} - known)
    rows = [*STEPS, *((k, k) for k in extra)]
    heads = [f"{m.appliance} {m.version}" for m in manifests]
    width = max(12, *(len(h) for h in heads))
    print(f"  {'step':<42} " + " ".join(f"{h:>{width}}" for h in heads))
    for key, label in rows:
        cells = [f"{m.timings[key]:.1f} s" if key in m.timings else "-" for m in manifests]
        if any(c != "-" for c in cells):
            print(f"  {label:<42} " + " ".join(f"{c:>{width}}" for c in cells))
    print("  " + "  ".join(f"{m.appliance}: accel {m.accel}, created {m.created}" for m in manifests))


def smoke() -> None:
    output = Path(os.environ.get("VMI_TEST_OUTPUT", ROOT / "work" / "test-output"))
    manifests = newest_manifests(output)
    print(machine())
    if manifests:
        print(f"step times recorded by the builds in {output} (newest version of each appliance; nothing built):")
        side_by_side(manifests)
        return
    with tempfile.TemporaryDirectory(prefix="build-timing-smoke-") as tmp:
        print(f"no build in {output}: fixture manifests (made-up step times, not a measurement):")
        side_by_side(fixture_manifests(Path(tmp)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appliance", action="append", help="appliance to build (repeat; default: both baselines)")
    parser.add_argument("--cold", action="store_true", help="empty the bootstrap and base-disk cache first")
    parser.add_argument("--output", default=str(ROOT / "work" / "bench-output"))
    parser.add_argument("--smoke", action="store_true", help="print the step times of existing manifests; no build")
    args = parser.parse_args()
    if args.smoke:
        smoke()
        return

    from pipeline.log import setup_logging
    from pipeline.settings import load_settings

    config = yaml.safe_load((ROOT / "invoke.yaml").read_text())["vmi"]
    cache = ROOT / "work" / "bench-cache" if args.cold else ROOT / ".cache" / "vmi"
    if args.cold:
        shutil.rmtree(cache, ignore_errors=True)
    settings = load_settings(config, ROOT, environ={"VMI_OUTPUT_DIR": args.output, "VMI_CACHE_DIR": str(cache)})
    setup_logging()
    print(f"before: {machine()}")

    built = [_build_one(settings, name, args.cold) for name in args.appliance or ["debian-12", "debian-13"]]
    if len(built) > 1:
        print("\nside by side:")
        side_by_side(built)
    print(f"after: {machine()}")


def _build_one(settings: Settings, name: str, cold: bool) -> BuildManifest:
    from pipeline.builder import build_appliance

    start = time.monotonic()
    result = build_appliance(settings, name, force=True)
    wall = time.monotonic() - start

    t = result.manifest.timings
    packer = t.get("packer", 0.0)
    rows = [(label, t.get(key, 0.0)) for key, label in STEPS if key != "total"] + [("whole build (wall)", wall)]
    overhead = wall - packer - t.get("base", 0.0)
    print(f"\nbuild of {name} {result.version} ({'cold cache' if cold else 'warm base cache'}, "
          f"accel {result.manifest.accel})")  # fmt: skip
    for label, seconds in rows:
        print(f"  {label:<42} {seconds:7.1f} s")
    print(
        f"  {'pipeline overhead (wall - packer - base)':<42} {overhead:7.1f} s "
        f"({100 * overhead / packer:.1f}% of Packer)"
    )
    print(f"  {'pipeline overhead (wall - packer)':<42} {wall - packer:7.1f} s")

    start = time.monotonic()
    again = build_appliance(settings, name)
    noop = time.monotonic() - start
    print(f"  {'second run, nothing changed (up to date)':<42} {noop:7.2f} s (up_to_date={again.up_to_date})")

    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    record = {"appliance": name, "version": result.version, "cold": cold, "wall": round(wall, 1),
              "timings": t, "overhead": round(overhead, 1), "noop": round(noop, 2),
              "load": os.getloadavg(), "cores": os.cpu_count()}  # fmt: skip
    with open(results / "build_timing.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    return result.manifest


if __name__ == "__main__":
    main()
