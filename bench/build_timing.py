"""Time a real build of an appliance per step, and the pipeline's own overhead over Packer.

    .venv/bin/python bench/build_timing.py [--appliance debian-12] [--cold] [--output DIR]

--cold empties the bootstrap/disk cache first (a build from nothing); by default the cache is kept
and only the Packer build is redone (--force). Prints the per-step table and appends a JSON line to
bench/results/build_timing.jsonl.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.build import build_appliance  # noqa: E402
from pipeline.log import setup_logging  # noqa: E402
from pipeline.settings import load_settings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appliance", default="debian-12")
    parser.add_argument("--cold", action="store_true", help="empty the bootstrap and base-disk cache first")
    parser.add_argument("--output", default=str(ROOT / "work" / "bench-output"))
    args = parser.parse_args()

    config = yaml.safe_load((ROOT / "invoke.yaml").read_text())["vmi"]
    cache = ROOT / "work" / "bench-cache" if args.cold else ROOT / ".cache" / "vmi"
    if args.cold:
        shutil.rmtree(cache, ignore_errors=True)
    settings = load_settings(config, ROOT, environ={"VMI_OUTPUT_DIR": args.output, "VMI_CACHE_DIR": str(cache)})
    setup_logging()

    start = time.monotonic()
    result = build_appliance(settings, args.appliance, force=True)
    wall = time.monotonic() - start

    t = result.manifest.timings
    packer = t.get("packer", 0.0)
    rows = [
        ("bootstrap + base disk", t.get("base", 0.0)),
        ("packer: boot until SSH", t.get("packer.boot", 0.0)),
        ("packer: provisioning", t.get("packer.provision", 0.0)),
        ("packer: shutdown", t.get("packer.shutdown", 0.0)),
        ("packer: compact disk", t.get("packer.compact", 0.0)),
        ("packer wall time", packer),
        ("manifest (package list, sha256/sha512)", t.get("manifest", 0.0)),
        ("whole build (wall)", wall),
    ]
    overhead = wall - packer - t.get("base", 0.0)
    print(f"\nbuild of {args.appliance} {result.version} ({'cold cache' if args.cold else 'warm base cache'}, "
          f"accel {result.manifest.accel})")  # fmt: skip
    for label, seconds in rows:
        print(f"  {label:<42} {seconds:7.1f} s")
    print(
        f"  {'pipeline overhead (wall - packer - base)':<42} {overhead:7.1f} s "
        f"({100 * overhead / packer:.1f}% of Packer)"
    )
    print(f"  {'pipeline overhead (wall - packer)':<42} {wall - packer:7.1f} s")

    start = time.monotonic()
    again = build_appliance(settings, args.appliance)
    noop = time.monotonic() - start
    print(f"  {'second run, nothing changed (up to date)':<42} {noop:7.2f} s (up_to_date={again.up_to_date})")

    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    record = {"appliance": args.appliance, "version": result.version, "cold": args.cold, "wall": round(wall, 1),
              "timings": t, "overhead": round(overhead, 1), "noop": round(noop, 2)}  # fmt: skip
    with open(results / "build_timing.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
