"""`verify-ova`: (a) the worst-case time over hostile and generated inputs up to 1 MiB, and (b) its
throughput on a real OVA (every grain inflated) next to `qemu-img convert -O raw` of the same VMDK to
/dev/null (extracted first), with the machine's load and core count.

Target (issue 15): verify at most 0.6x of that convert; (a) should stay well under a second per input.
The OVA is the reference build's if ``$VMI_TEST_OUTPUT`` (default work/test-output) holds one, else one
packed here around a generated disk with data. qemu 7.2 cannot open /dev/null as a raw target ("Cannot
grow device files"); the bench then writes to qemu's null block driver instead, which is the same.

Usage: .venv/bin/python bench/verify_bench.py [--smoke] [--runs 3] [--size-gib 3] [--data-gib 0.5] [--work DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import resource
import statistics
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.appliance import find_appliance  # noqa: E402
from pipeline.errors import VerificationError  # noqa: E402
from pipeline.formats.ova import Member, manifest_text, write_tar  # noqa: E402
from pipeline.formats.ovf import DiskRef, build_descriptor  # noqa: E402
from pipeline.package.verify import verify_ova  # noqa: E402

MIB = 2**20
SECTOR, GRAIN = 512, 128
STEM = "bench"


def pack(path: Path, vmdk: bytes | Path, capacity: int, ovf_edit: Callable[[bytes], bytes] = lambda b: b) -> Path:
    """An OVA around ``vmdk`` with a generated descriptor and a correct manifest."""
    disk_name = f"{STEM}-disk1.vmdk"
    size = len(vmdk) if isinstance(vmdk, bytes) else vmdk.stat().st_size
    appliance = find_appliance(ROOT / "packer_templates", "debian-12")
    ovf = ovf_edit(build_descriptor(appliance, "1", DiskRef(disk_name, size, capacity)))
    if isinstance(vmdk, bytes):
        digest, disk = hashlib.sha256(vmdk).hexdigest(), Member.from_bytes(disk_name, vmdk)
    else:
        h = hashlib.sha256()
        with open(vmdk, "rb") as f:
            while chunk := f.read(4 * MIB):
                h.update(chunk)
        digest, disk = h.hexdigest(), Member(disk_name, size, _chunks(vmdk))
    mf = manifest_text([(f"{STEM}.ovf", hashlib.sha256(ovf).hexdigest()), (disk_name, digest)])
    with open(path, "wb") as out:
        write_tar(out, [Member.from_bytes(f"{STEM}.ovf", ovf), Member.from_bytes(f"{STEM}.mf", mf), disk], 0)
    return path


def _chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(4 * MIB):
            yield chunk


def stream_vmdk(capacity: int, grains: dict[int, bytes]) -> bytes:
    """A true stream (GD at the end) with the given compressed payloads by LBA."""

    def header(gd: int) -> bytes:
        return struct.pack("<4sIIQQQQIQQQB4sH", b"KDMV", 3, 0x30003, capacity, GRAIN, 1, 1, 512, 0, gd, 2, 0,
                           b"\n \r\n", 1).ljust(SECTOR, b"\0")  # fmt: skip

    desc = (
        '# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="streamOptimized"\n'
        f'RW {capacity} SPARSE "d.vmdk"\n'
    )
    out = bytearray(header(0xFFFFFFFFFFFFFFFF) + desc.encode().ljust(SECTOR, b"\0"))
    table: dict[int, int] = {}
    for lba in sorted(grains):
        table[lba // GRAIN] = len(out) // SECTOR
        g = struct.pack("<QI", lba, len(grains[lba])) + grains[lba]
        out += g + b"\0" * (-len(g) % SECTOR)
    n = -(-capacity // GRAIN)
    directory = []
    for first in range(0, n, 512):
        out += struct.pack("<QII", 4, 0, 1).ljust(SECTOR, b"\0")
        directory.append(len(out) // SECTOR)
        out += struct.pack("<512I", *[table.get(g, 0) for g in range(first, first + 512)])
    out += struct.pack("<QII", -(-len(directory) * 4 // SECTOR), 0, 2).ljust(SECTOR, b"\0")
    gd = len(out) // SECTOR
    gdb = struct.pack(f"<{len(directory)}I", *directory)
    out += gdb + b"\0" * (-len(gdb) % SECTOR)
    out += struct.pack("<QII", 1, 0, 3).ljust(SECTOR, b"\0") + header(gd) + bytes(SECTOR)
    return bytes(out)


def hostile_inputs(work: Path, limit: int) -> dict[str, Path]:
    """Inputs built to cost the verifier time or memory, each at most ``limit`` bytes."""
    cases: dict[str, Path] = {}
    info = tarfile.TarInfo(f"{STEM}.ovf")
    block = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
    block[124:136] = b"\xff" * 12
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    (work / "negative-size.ova").write_bytes(bytes(block) + b"A" * (min(limit, 276 * 1024) - 512))
    cases["tar size -1 (base-256)"] = work / "negative-size.ova"
    (work / "random.ova").write_bytes(os.urandom(limit))
    cases["random bytes"] = work / "random.ova"
    many = io.BytesIO()
    with tarfile.open(fileobj=many, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(limit // 1024 - 2):
            member = tarfile.TarInfo(f"m{i}.bin")
            member.size = 1
            tar.addfile(member, io.BytesIO(b"x"))
    (work / "many-members.ova").write_bytes(many.getvalue()[:limit])
    cases["thousands of tar members"] = work / "many-members.ova"
    bomb = zlib.compress(bytes(GRAIN * SECTOR), 9)  # 64 KiB of output from ~80 bytes: one sector per grain
    count = max(8, (limit - 16 * 1024) // SECTOR)
    capacity = count * GRAIN
    bombs = stream_vmdk(capacity, {i * GRAIN: bomb for i in range(count)})
    cases["grains inflating 128x"] = pack(work / "bombs.ova", bombs, capacity * SECTOR)
    garbage = {i * GRAIN: os.urandom(400) for i in range(count)}
    cases["garbage grains"] = pack(work / "garbage.ova", stream_vmdk(capacity, garbage), capacity * SECTOR)
    small = stream_vmdk(GRAIN * 4, {0: zlib.compress(b"x" * GRAIN * SECTOR)})

    def many_disks(ovf: bytes) -> bytes:
        line = next(ln for ln in ovf.split(b"\n") if b"<Disk " in ln)
        extra = b"\n".join(line.replace(b'"vmdisk1"', b'"d%d"' % i) for i in range((limit - 8192) // (len(line) + 1)))
        return ovf.replace(line, line + b"\n" + extra, 1)

    cases["1 MiB of Disk entries on one file"] = pack(work / "disks.ova", small, GRAIN * 4 * SECTOR, many_disks)
    cases["capacity byte * 2^10000000000"] = pack(
        work / "units.ova", small, GRAIN * 4 * SECTOR,
        lambda o: o.replace(b'Units="byte"', b'Units="byte * 2^10000000000"'),
    )  # fmt: skip
    return cases


def worst_case(work: Path, limit: int) -> None:
    print(f"(a) hostile inputs up to {limit // 1024} KiB: verify-ova time (qemu-img check included)")
    worst = 0.0
    for label, path in hostile_inputs(work, limit).items():
        start = time.monotonic()
        try:
            verify_ova(path)
            outcome = "sound"
        except VerificationError as e:
            outcome = f"refused, {len(e.problems)} problem(s): {e.problems[0][:70]}"
        took = time.monotonic() - start
        worst = max(worst, took)
        print(f"  {label:<36} {path.stat().st_size:>8} B {took:7.3f} s  {outcome}")
    print(f"  worst case: {worst:.3f} s")


def make_disk(work: Path, size_gib: float, data_gib: float) -> Path:
    """A streamOptimized VMDK (qemu-img) of a raw disk with OS-like data: binaries and text, a quarter random."""
    raw = work / "disk.raw"
    sources = [p for d in ("/usr/lib", "/usr/bin", "/usr/share") for p in Path(d).rglob("*") if p.is_file()]
    want, written = int(data_gib * 1024 * MIB), 0
    with open(raw, "wb") as out:
        out.truncate(int(size_gib * 1024 * MIB))
        out.seek(16 * MIB)
        for src in sources:
            if written >= want:
                break
            try:
                data = src.read_bytes()[: want - written]
            except OSError:
                continue
            if written // (64 * MIB) % 4 == 3:
                data = os.urandom(len(data))
            out.write(data)
            written += len(data)
    vmdk = work / "disk.vmdk"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", raw, vmdk],
                   check=True)  # fmt: skip
    raw.unlink()
    return vmdk


def reference_ova() -> Path | None:
    output = Path(os.environ.get("VMI_TEST_OUTPUT", ROOT / "work" / "test-output"))
    found = sorted(output.glob("debian-12/*/*.ova"))
    return found[-1] if found else None


def extract_vmdk(ova: Path, work: Path) -> Path:
    with tarfile.open(ova) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".vmdk"))
        source = tar.extractfile(member)
        assert source is not None
        target = work / "extracted.vmdk"
        with open(target, "wb") as out:
            while chunk := source.read(4 * MIB):
                out.write(chunk)
    return target


def convert_argv(vmdk: Path) -> list[str]:
    probe = subprocess.run(["qemu-img", "convert", "-f", "vmdk", "-O", "raw", str(vmdk), "/dev/null"],
                           capture_output=True, check=False)  # fmt: skip
    if probe.returncode == 0:
        return ["qemu-img", "convert", "-f", "vmdk", "-O", "raw", str(vmdk), "/dev/null"]
    size = int(subprocess.run(["qemu-img", "info", "--output=json", str(vmdk)], capture_output=True, text=True,
                              check=True).stdout.split('"virtual-size":')[1].split(",")[0])  # fmt: skip
    return ["qemu-img", "convert", "-n", "-f", "vmdk", "--target-image-opts", str(vmdk), f"driver=null-co,size={size}"]


def throughput(work: Path, runs: int, size_gib: float, data_gib: float) -> None:
    ova = reference_ova()
    if ova is None:
        vmdk = make_disk(work, size_gib, data_gib)
        capacity = int(size_gib * 1024 * MIB)
        ova = pack(work / "generated.ova", vmdk, capacity)
        source = f"generated: {size_gib:g} GiB virtual, {data_gib:g} GiB of data"
    else:
        source = "the reference build"
    vmdk = extract_vmdk(ova, work)
    argv = convert_argv(vmdk)
    print(f"(b) throughput on {ova} ({source}), OVA {ova.stat().st_size / MIB:.0f} MiB")
    print(f"  convert: {' '.join(argv)}")
    verify_times, convert_times, verify_cpu, convert_cpu = [], [], [], []
    for _ in range(runs):  # paired, alternating, so load drifts hit both sides
        start, cpu = time.monotonic(), _cpu()
        verify_ova(ova)
        verify_times.append(time.monotonic() - start)
        verify_cpu.append(_cpu() - cpu)
        start, cpu = time.monotonic(), _cpu()
        subprocess.run(argv, check=True)
        convert_times.append(time.monotonic() - start)
        convert_cpu.append(_cpu() - cpu)
    v, c = statistics.median(verify_times), statistics.median(convert_times)
    print(f"  verify-ova (all grains, sha256, qemu-img check)  median {v:6.2f} s  runs {_fmt(verify_times)}"
          f"  cpu {_fmt(verify_cpu)}")  # fmt: skip
    print(f"  qemu-img convert -O raw (null target)           median {c:6.2f} s  runs {_fmt(convert_times)}"
          f"  cpu {_fmt(convert_cpu)}")  # fmt: skip
    print(
        f"  ratio verify / convert: {v / c:.2f}x wall (target <= 0.60x); "
        f"{statistics.median(verify_cpu) / statistics.median(convert_cpu):.2f}x cpu"
    )


def _cpu() -> float:
    """CPU seconds (user + system) of this process and its waited-for children, e.g. qemu-img."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _fmt(times: list[float]) -> str:
    return " ".join(f"{t:.2f}" for t in times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny inputs, a few seconds (CI)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-gib", type=float, default=3.0)
    parser.add_argument("--data-gib", type=float, default=0.5)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        if args.smoke:
            worst_case(work, 64 * 1024)
            throughput(work, 1, 0.0625, 0.01)
        else:
            worst_case(work, MIB)
            throughput(work, args.runs, args.size_gib, args.data_gib)
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
