"""Package speed: the whole `invoke package --disk` (OVA with our streamOptimized VMDK, zstd qcow2,
checksum files) against a bare single-threaded `qemu-img convert -O vmdk -o subformat=streamOptimized`
of the same disk, in paired runs (the order alternates so that drift in machine load cancels out).

Target (issue 15): ours at most 0.6x the bare conversion on 2 cores; our VMDK within 5 % of qemu-img's
size. Prints both medians, the ratio per pair, the sizes, the deflate used, load average and cores.

    .venv/bin/python bench/package_bench.py             # the reference build's disk, else a generated one
    .venv/bin/python bench/package_bench.py --smoke     # a 64 MiB disk, a few seconds (CI runs this)
    .venv/bin/python bench/package_bench.py --disk PATH [--runs 5] [--work DIR]

Default disk: the newest debian-12 build in ``$VMI_TEST_OUTPUT`` (the tests' reference build), else a
3 GiB qcow2 with ~500 MiB of data made from /usr (binaries, text, a quarter random) in ``--work``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.formats.vmdk_write import default_deflater  # noqa: E402
from pipeline.manifest import BuildManifest, list_versions  # noqa: E402
from pipeline.package import package_appliance  # noqa: E402
from pipeline.package.verify import verify_ova  # noqa: E402
from pipeline.settings import Settings, load_settings  # noqa: E402

MIB = 1024 * 1024
TARGET = 0.6


def make_source(path: Path, size: int, data: int) -> None:
    """A qcow2 whose data looks like an OS disk: real binaries and text from /usr, a quarter random, holes."""
    raw = path.with_suffix(".raw")
    files = (path for top in ("/usr/lib", "/usr/bin", "/usr/share") for path in _walk(Path(top)))
    written = 0
    with open(raw, "wb") as out:
        out.truncate(size)
        out.seek(min(64 * MIB, size // 8))
        for src in files:
            if written >= data:
                break
            try:
                chunk = src.read_bytes()[: min(16 * MIB, data - written)]
            except OSError:
                continue
            if written // (data // 4 or 1) == 3:  # the last quarter incompressible (media, packages)
                chunk = os.urandom(len(chunk))
            out.write(chunk)
            written += len(chunk)
            if len(chunk) % 16 == 7:  # leave the odd hole
                out.seek(8 * MIB, os.SEEK_CUR)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, path], check=True)
    raw.unlink()


def _walk(top: Path) -> Iterator[Path]:
    """Regular files below ``top`` in a fixed order, lazily (a small disk reads only a few)."""
    for folder, dirs, names in os.walk(top):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                yield path


def reference_disk() -> Path | None:
    base = Path(os.environ.get("VMI_TEST_OUTPUT", ROOT / "work" / "test-output"))
    versions = list_versions(base / "debian-12")
    if not versions:
        return None
    version_dir = base / "debian-12" / versions[-1]
    disk = BuildManifest.load(version_dir).artifact("build-disk")
    return version_dir / disk.name if disk.format == "qcow2" else None


def settings(output: Path) -> Settings:
    config = yaml.safe_load((ROOT / "invoke.yaml").read_text())["vmi"]
    return load_settings({**config, "output_dir": str(output)}, ROOT, environ={})


def cpu_seconds() -> float:
    """User + system CPU of this process and its finished children so far."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def bare(source: Path, work: Path) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and VMDK size of a bare qemu-img conversion."""
    target = work / "bare.vmdk"
    target.unlink(missing_ok=True)
    start, cpu = time.monotonic(), cpu_seconds()
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "vmdk", "-o", "subformat=streamOptimized", source, target],
        check=True,
    )
    return time.monotonic() - start, cpu_seconds() - cpu, target.stat().st_size


def ours(source: Path, work: Path) -> tuple[float, float, int, dict[str, float]]:
    """Wall seconds, CPU seconds, VMDK member size and step timings of the whole package step."""
    out = work / "ours"
    shutil.rmtree(out, ignore_errors=True)
    start, cpu = time.monotonic(), cpu_seconds()
    result = package_appliance(settings(work / "output"), "debian-12", version="1", disk=source, out=out)
    elapsed, used = time.monotonic() - start, cpu_seconds() - cpu
    with tarfile.open(out / "debian-12-1.ova") as tar:
        vmdk_size = tar.getmember("debian-12-1-disk1.vmdk").size
    return elapsed, used, vmdk_size, result.timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a 64 MiB disk, one pair: proves the bench runs")
    parser.add_argument("--disk", type=Path, help="a qcow2 disk (default: the reference build, else generated)")
    parser.add_argument("--runs", type=int, default=3, help="pairs of runs (default 3)")
    parser.add_argument("--work", type=Path, default=ROOT / "work" / "bench")
    args = parser.parse_args()
    work: Path = args.work / ("smoke" if args.smoke else "package")
    work.mkdir(parents=True, exist_ok=True)
    source = args.disk or (None if args.smoke else reference_disk())
    if source is None:
        source = work / "source.qcow2"
        size, data = (64 * MIB, 8 * MIB) if args.smoke else (3 * 1024 * MIB, 500 * MIB)
        if not source.exists():
            print(f"making a {size // MIB} MiB disk with {data // MIB} MiB of data ...", flush=True)
            make_source(source, size, data)
    runs = 1 if args.smoke else args.runs
    subprocess.run(["cat", source], stdout=subprocess.DEVNULL, check=True)  # same page-cache state for both
    print(f"source: {source} ({source.stat().st_size / MIB:.0f} MiB allocated)")
    print(f"deflate: {default_deflater().name}; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f} at start")
    bares, oursl, ratios, cpu_bare, cpu_ours = [], [], [], [], []
    sizes: tuple[int, int] = (0, 0)
    timings: dict[str, float] = {}
    for i in range(runs):
        first_bare = i % 2 == 0
        if first_bare:
            b, b_cpu, bare_size = bare(source, work)
        o, o_cpu, our_size, timings = ours(source, work)
        if not first_bare:
            b, b_cpu, bare_size = bare(source, work)
        bares.append(b)
        oursl.append(o)
        ratios.append(o / b)
        cpu_bare.append(b_cpu)
        cpu_ours.append(o_cpu)
        sizes = (our_size, bare_size)
        print(f"  pair {i + 1}: bare qemu-img {b:7.2f} s, ours (whole package) {o:7.2f} s, ratio {o / b:.2f}")
    if args.smoke:
        verify_ova(work / "ours" / "debian-12-1.ova")  # a bench whose output is wrong is no bench
    bare_median, ours_median = statistics.median(bares), statistics.median(oursl)
    ratio = ours_median / bare_median
    print(f"bare qemu-img convert (streamOptimized), median: {bare_median:7.2f} s")
    print(f"ours, invoke package --disk (OVA + qcow2 + sums), median: {ours_median:7.2f} s")
    print(f"  last run: ova {timings.get('ova', 0):.2f} s, qcow2 {timings.get('qcow2', 0):.2f} s (alongside)")
    print(f"ratio ours/bare: {ratio:.2f} (pairs {min(ratios):.2f}-{max(ratios):.2f}; target <= {TARGET})")
    cores = len(os.sched_getaffinity(0))
    b_cpu, o_cpu = statistics.median(cpu_bare), statistics.median(cpu_ours)
    print(
        f"cpu seconds (load-proof): bare {b_cpu:.2f}, ours {o_cpu:.2f}; ours spread on {cores} idle cores would be "
        f"{o_cpu / cores / b_cpu:.2f}x the bare conversion's cpu"
    )
    print(
        f"vmdk: ours {sizes[0]:,} bytes, qemu-img {sizes[1]:,} bytes: {100 * (sizes[0] / sizes[1] - 1):+.1f} % "
        "(target within 5 %)"
    )
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
