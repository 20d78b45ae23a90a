"""Policy audit time: our offline audit against a guest-booting inspection of the same disk.

    .venv/bin/python bench/audit_bench.py [--disk PATH --format qcow2] [--skip-boot]
    .venv/bin/python bench/audit_bench.py --smoke

Default disk: the newest debian-12 build in ``$VMI_TEST_OUTPUT`` (the tests' reference build), else
``$VMI_OUTPUT_DIR``/``output``. Times ``audit_disk`` (qemu-img convert, debugfs rdump, every check,
the bookworm-security index fetched from the mirror) and ``virt-inspector`` under TCG
(``LIBGUESTFS_BACKEND=direct``: libguestfs boots its own appliance kernel to read the disk, which is
what a guest-booting inspection costs here without KVM; it only identifies the OS, no policy checks).
Prints seconds for each and the ratio, with the machine's core count and load average.

--smoke: a 40 MiB disk made on the spot from the audit tests' hardened root tree
(``tests/endorse/disks.py``), audited offline (no security index, no boot): proves the bench runs,
in a few seconds; its figures are not the target's.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.audit.report import SecuritySource, audit_disk  # noqa: E402
from pipeline.manifest import BuildManifest, list_versions  # noqa: E402
from pipeline.run import run  # noqa: E402


def machine() -> str:
    """Cores and load average, printed with every set of figures (the machine is shared)."""
    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    return f"machine: {os.cpu_count()} cores, load average {load} (1/5/15 min)"


def smoke(scratch: Path) -> None:
    """The whole bench on a tiny disk: the audit tests' hardened root in a 40 MiB qcow2, no network."""
    spec = importlib.util.spec_from_file_location("endorse_disks", ROOT / "tests" / "endorse" / "disks.py")
    assert spec is not None and spec.loader is not None
    disks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(disks)
    disk = disks.make_disk(disks.good_rootfs(scratch / "root"), scratch / "smoke.qcow2")
    print(f"disk: {disk.name} (qcow2, {disk.stat().st_size / 2**20:.1f} MiB, made from tests/endorse/disks.py)")
    print(machine())
    start = time.monotonic()
    report = audit_disk(disk, "qcow2", scratch=scratch / "audit", packages=disks.PACKAGES, security=None)
    ours = time.monotonic() - start
    failed = ", ".join(c.id for c in report.failures) or "none"
    checks = len(report.checks)
    print(f"offline audit (qemu-img + debugfs + {checks} checks, no index): {ours:.2f} s  [failed: {failed}]")
    start = time.monotonic()
    run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(disk), str(scratch / "bare.raw")])
    bare = time.monotonic() - start
    print(f"bare qemu-img convert of the same disk to raw: {bare:.2f} s")


def newest_reference() -> tuple[Path, str, BuildManifest | None]:
    candidates = (
        Path(os.environ.get("VMI_TEST_OUTPUT", ROOT / "work" / "test-output")),
        Path(os.environ.get("VMI_OUTPUT_DIR", ROOT / "output")),
    )
    for base in candidates:
        versions = list_versions(base / "debian-12")
        if versions:
            version_dir = base / "debian-12" / versions[-1]
            manifest = BuildManifest.load(version_dir)
            disk = manifest.artifact("build-disk")
            return version_dir / disk.name, disk.format, manifest
    raise SystemExit("no debian-12 build found: pass --disk PATH --format FMT")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--disk", type=Path)
    parser.add_argument("--format", default="qcow2")
    parser.add_argument("--skip-boot", action="store_true", help="only time our audit")
    parser.add_argument("--smoke", action="store_true", help="a tiny disk made on the spot, no network, no boot")
    args = parser.parse_args()
    if args.smoke:
        (ROOT / "work").mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="audit-smoke-", dir=ROOT / "work") as scratch:
            (Path(scratch) / "audit").mkdir()
            smoke(Path(scratch))
        return
    if args.disk:
        disk, fmt, manifest = args.disk, args.format, None
        beside = args.disk.resolve().parent.parent  # <version_dir>/build/<disk>: use its manifest
        if (beside / "manifest.json").exists():
            manifest = BuildManifest.load(beside)
    else:
        disk, fmt, manifest = newest_reference()
    print(f"disk: {disk} ({fmt}, {disk.stat().st_size / 2**20:.0f} MiB)")
    print(machine())

    (ROOT / "work").mkdir(exist_ok=True)
    security = SecuritySource("http://deb.debian.org/debian-security", "bookworm-security", "amd64")
    with tempfile.TemporaryDirectory(prefix="audit-bench-", dir=ROOT / "work") as scratch:
        start = time.monotonic()
        packages = manifest.packages if manifest else None
        report = audit_disk(disk, fmt, scratch=Path(scratch), packages=packages, security=security)
        ours = time.monotonic() - start
    failed = ", ".join(c.id for c in report.failures) or "none"
    print(f"offline audit (qemu-img + debugfs + {len(report.checks)} checks): {ours:.1f} s  [failed: {failed}]")
    if args.skip_boot:
        return
    # force_tcg: /dev/kvm exists here but does not work, and libguestfs would hang trying it first.
    # The supermin appliance is cached in work/guestfs-cache, so only the first run pays for building it.
    cache = ROOT / "work" / "guestfs-cache"
    cache.mkdir(parents=True, exist_ok=True)
    cold = not any(cache.iterdir())
    env = {"LIBGUESTFS_BACKEND": "direct", "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg", "TMPDIR": str(cache)}
    start = time.monotonic()
    result = run(["virt-inspector", f"--format={fmt}", "-a", str(disk)], env=env, timeout=3600, check=False)
    booted = time.monotonic() - start
    status = "ok" if result.returncode == 0 else f"exit {result.returncode}: {result.stderr.strip()[-200:]}"
    label = "cold appliance cache" if cold else "warm appliance cache"
    print(f"guest-booting inspection (virt-inspector, TCG, {label}, inspection only): {booted:.1f} s  [{status}]")
    print(f"ratio: the booting inspection takes {booted / ours:.1f}x our full audit")
    print(f"after: {machine()}")


if __name__ == "__main__":
    main()
