"""Boot built images the way a cloud does (NoCloud seed with the user's key) and show where the time
until the first SSH key login goes, per firmware the definition declares.

    .venv/bin/python bench/boot_timing.py [--appliance debian-13 ...] [--runs N] [--output DIR]
    .venv/bin/python bench/boot_timing.py --disk A.qcow2 --disk B.qcow2 [--firmware uefi] [--runs N]
    .venv/bin/python bench/boot_timing.py --smoke

Boots the newest version of each appliance in ``--output`` (default ``$VMI_TEST_OUTPUT``, else
work/test-output: the reference builds) through a throwaway overlay 1 GiB larger than the image (as on
a site: cloud-init grows the root into it), on the QEMU machine the build itself uses on this host
(TCG here), under SeaBIOS for ``bios``, OVMF for ``uefi``, both for ``hybrid``. Prints one column per
boot: firmware + boot loader, kernel + initramfs, systemd until cloud-init's process is ready,
cloud-init's stages until sshd is ready, sshd until the login, and the total from QEMU's start (target
in issue 10: at most 40 s under TCG). Appends JSON lines to bench/results/boot_timing.jsonl. Under TCG
every figure scales with the host's single-core speed: the machine line carries a reference (a fixed
pure-Python loop) so figures from two machines compare.

``--disk`` (repeatable) compares given disks instead, booted in turn (A, B, A, B, ...) so each
run of each disk sees the same host load: the way to compare two builds of one appliance. ``--cpu``
(repeatable, with ``--disk``) boots each disk under each of these QEMU ``-cpu`` models in turn instead
of the build's own (pipeline.builder.accel.TCG_CPU_MODEL under TCG): the way to compare CPU models.
``--ovmf DIR`` (repeatable, with ``--disk --firmware uefi``) likewise boots each disk under the OVMF in
each folder (OVMF_CODE_4M.fd and OVMF_VARS_4M.fd; e.g. /usr/share/OVMF against .venv/share/OVMF).

--smoke boots nothing: it prints the timings the boot tests recorded (``boot-timings.jsonl`` in the
test output, written by tests/builder/test_boot_e2e.py), else one recorded sample parsed through the
same code (made-up figures: they prove the table, not the speed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.appliance import Firmware, find_appliance  # noqa: E402
from pipeline.builder.accel import Ovmf, find_ovmf  # noqa: E402
from pipeline.builder.seed import generate_ssh_key, meta_data, multipart_user_data, write_seed_iso  # noqa: E402
from pipeline.errors import ConfigError  # noqa: E402
from pipeline.manifest import BuildManifest, list_versions  # noqa: E402
from tests.builder.guest import (  # noqa: E402
    PHASES,
    SAMPLE_SHOWN,
    BootTiming,
    boot,
    boot_timing,
    median_timings,
    parse_milestones,
)

FIRMWARES = {Firmware.BIOS: ("bios",), Firmware.UEFI: ("uefi",), Firmware.HYBRID: ("bios", "uefi")}
TARGET_SECONDS = 40.0


def core_reference() -> float:
    """Seconds for a fixed single-core workload (10 million interpreted loop steps; the best of 3)."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        total = 0
        for i in range(10_000_000):
            total += i
        best = min(best, time.perf_counter() - start)
    return best


def machine() -> str:
    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    try:
        ovmf = find_ovmf().describe()
    except ConfigError as err:
        ovmf = f"none ({err})"
    return (
        f"machine: {os.cpu_count()} cores, load average {load} (1/5/15 min), "
        f"single-core reference {core_reference():.2f} s (10M Python loop steps; lower is faster); "
        f"UEFI firmware {ovmf}"
    )


def table(rows: list[tuple[str, BootTiming]]) -> None:
    """One column per boot, one row per phase."""
    labels = [label for label, _ in rows]
    width = max(12, *(len(label) for label in labels))
    print(f"{'':52}" + "".join(f"{label:>{width + 2}}" for label in labels))
    for field, text in PHASES:
        values = "".join(f"{getattr(t, field):>{width}.1f} s" for _, t in rows)
        print(f"  {text:50}{values}")
    verdicts = "".join(f"{('met' if t.ssh_login <= TARGET_SECONDS else 'not met'):>{width + 2}}" for _, t in rows)
    print(f"  {'target: SSH login within 40 s (issue 10)':50}{verdicts}")


def smoke() -> None:
    recorded = Path(os.environ.get("VMI_TEST_OUTPUT", ROOT / "work" / "test-output")) / "boot-timings.jsonl"
    rows: list[tuple[str, BootTiming]] = []
    if recorded.is_file():
        fields = {f for f, _ in PHASES} | {"firmware"}
        for line in recorded.read_text().splitlines()[-6:]:
            doc = json.loads(line)
            timing = BootTiming(**{k: v for k, v in doc.items() if k in fields})
            rows.append((f"{doc['label'].split('-20')[0]}/{timing.firmware}", timing))
        print(f"recorded by the boot tests: {recorded}")
    else:
        milestones = parse_milestones(SAMPLE_SHOWN)
        rows.append(("sample/bios", boot_timing("bios", 70.0, milestones, 68.0)))
        print("no boot recorded yet: one made-up sample, parsed through the bench's own code")
    table(rows)


def boot_once(
    disk: Path, firmware: str, work: Path, cpu_model: str | None = None, ovmf: Ovmf | None = None
) -> BootTiming:
    key = generate_ssh_key(work / "key", comment="boot-timing")
    meta = meta_data("boot-timing-1", "boot-timing", public_keys=(key.public_text,))
    seed = write_seed_iso(work / "seed.iso", meta, multipart_user_data([("x-shellscript", "#!/bin/sh\ntrue\n")]))
    with boot(disk, seed, key.private, work, firmware=firmware, cpu_model=cpu_model, ovmf=ovmf) as guest:
        guest.wait_for_ssh("debian", deadline_s=900)
        return guest.timing("debian")


def compare(
    disks: list[Path],
    firmware: str,
    runs: int,
    cpu_models: list[str] | None = None,
    ovmf_dirs: list[Path] | None = None,
) -> None:
    """Boot every (disk, CPU model, OVMF) combination in turn, ``runs`` rounds; one column per boot."""
    ovmfs: list[Ovmf | None] = [find_ovmf((folder,)) for folder in ovmf_dirs or []] or [None]
    combos = [(disk, cpu, ovmf) for disk in disks for cpu in (cpu_models or [None]) for ovmf in ovmfs]
    rows: list[tuple[str, BootTiming]] = []
    for _ in range(runs):
        for index, (disk, cpu, ovmf) in enumerate(combos):
            with tempfile.TemporaryDirectory(prefix="boot-timing-") as tmp:
                rows.append((f"{chr(65 + index)}/{firmware}", boot_once(disk, firmware, Path(tmp), cpu, ovmf)))
            under = (f" (-cpu {cpu})" if cpu else "") + (f" ({ovmf.describe()})" if ovmf else "")
            print(f"  {chr(65 + index)} {disk}{under}: SSH key login after {rows[-1][1].ssh_login:.1f} s", flush=True)
    table(rows)
    if runs > 1:
        print("median per disk (each phase on its own: they need not add up to the total)")
        table(median_timings(rows))
    print(machine())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--appliance", action="append", help="default: debian-12 and debian-13")
    parser.add_argument("--version", help="this version of each appliance (default: the newest built)")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--output", type=Path, help="build output (default: $VMI_TEST_OUTPUT or work/test-output)")
    parser.add_argument("--disk", type=Path, action="append", help="boot these qcow2 disks in turn instead")
    parser.add_argument("--firmware", choices=("bios", "uefi"), default="bios", help="with --disk (default bios)")
    parser.add_argument("--cpu", action="append", help="with --disk: boot each disk under these QEMU -cpu models")
    parser.add_argument(
        "--ovmf", type=Path, action="append", help="with --disk --firmware uefi: boot under each of these OVMF folders"
    )
    parser.add_argument("--smoke", action="store_true", help="print recorded boot timings; boot nothing")
    args = parser.parse_args()
    print(machine())
    if args.smoke:
        smoke()
        return
    if args.cpu and not args.disk:
        parser.error("--cpu needs --disk")
    if args.ovmf and (not args.disk or args.firmware != "uefi"):
        parser.error("--ovmf needs --disk and --firmware uefi")
    if args.disk:
        compare(args.disk, args.firmware, args.runs, args.cpu, args.ovmf)
        return
    output = args.output or Path(os.environ.get("VMI_TEST_OUTPUT", ROOT / "work" / "test-output"))
    rows: list[tuple[str, BootTiming]] = []
    for name in args.appliance or ["debian-12", "debian-13"]:
        versions = list_versions(output / name)
        version = args.version or (versions[-1] if versions else None)
        if version not in versions:
            print(f"{name}: no build {version or ''} in {output} (run the reference build tests first)")
            continue
        manifest = BuildManifest.load(output / name / version)
        disk = output / name / version / manifest.artifact("build-disk").name
        definition = find_appliance(ROOT / "packer_templates", name, ROOT / "provisioners")
        for firmware in FIRMWARES[definition.firmware]:
            for _ in range(args.runs):
                with tempfile.TemporaryDirectory(prefix="boot-timing-") as tmp:
                    rows.append((f"{name}/{firmware}", boot_once(disk, firmware, Path(tmp))))
                    print(f"  {name} {version} under {firmware}: SSH key login after {rows[-1][1].ssh_login:.1f} s")
    table(rows)
    if args.runs > 1:
        print("median per appliance and firmware (each phase on its own: they need not add up to the total)")
        table(median_timings(rows))
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    with open(results / "boot_timing.jsonl", "a") as f:
        for label, timing in rows:
            f.write(json.dumps({"label": label, "load": os.getloadavg()[0], **asdict(timing)}) + "\n")
    print(machine())


if __name__ == "__main__":
    main()
