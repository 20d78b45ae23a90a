"""Which QEMU accelerator a build uses: KVM only where a probe proves it runs the build's own guest
well, TCG otherwise.

``/dev/kvm`` can open fine and still fail in ways a trivial probe never sees (seen on this project's
machines): QEMU aborts at start with the build's CPU model (``failed to set MSR 0x10a``), or a real
kernel makes no progress at all under KVM while a 7-byte boot sector exits in 3 s. So the probe runs
the same QEMU machine the build runs (``qemu_machine()`` builds both: machine type, CPU model,
accelerator, memory, vCPUs) and a guest that does real work: the host's Linux kernel boots until it
panics for want of a root filesystem (it initialises every CPU feature, timer and device on the way)
and must print that marker within a bound. KVM is chosen only if it reaches the marker clearly faster
than TCG does. The build still retries once under TCG if KVM fails later (``pipeline.builder``).
"""

from __future__ import annotations

import enum
import functools
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline import run
from pipeline.errors import CommandError, ConfigError
from pipeline.log import log

MACHINE_TYPE = "pc"
UEFI_MACHINE_TYPE = "q35"  # OVMF wants q35 (SMM-capable chipset); SeaBIOS guests keep the i440fx "pc"
# UEFI firmware: the first of these folders that holds both files. scripts/setup puts Debian 13's OVMF
# (edk2 2025.02) into the virtualenv: under TCG it starts the boot loader ~2.1 s after QEMU's start,
# Debian 12's (edk2 2022.11, the system's ovmf package on bookworm) after ~4.4 s (bench/README.md).
OVMF_DIRS = (Path(sys.prefix) / "share" / "OVMF", Path("/usr/share/OVMF"))
OVMF_CODE_NAME = "OVMF_CODE_4M.fd"
OVMF_VARS_NAME = "OVMF_VARS_4M.fd"  # a template: every VM writes its own copy
# KVM must reach the marker within this bound and in less than this share of TCG's time.
KVM_PROBE_TIMEOUT = 20.0
TCG_PROBE_TIMEOUT = 120.0
KVM_MAX_SHARE_OF_TCG = 0.5
# The CPU an emulated (TCG) guest sees: QEMU's own default model (qemu64: AMD vendor, family 15, so the
# guest kernel turns on no Meltdown/Retbleed/SRSO mitigation) raised to x86-64-v2, the least that
# AlmaLinux 9 runs on (Debian and Ubuntu need v1), without SVM (nested virtualisation in an emulated
# guest is useless, and it makes the guest load kvm/kvm_amd), with RDRAND (as every CPU a site runs
# has): without it the guest kernel's random pool is not ready until ~17 s into the boot, cloud-init's
# Python blocks reading it and the kernel spins gathering jitter entropy, and under TCG that spin once
# hit the kernel's live code patching (an ``int3`` oops in sched_clock_cpu, then a panic). Not ``max``:
# that adds AVX2, AES/PCLMUL, SHA, 5-level paging and more, which the guest's glibc, kernel and udev
# then use or load, all of it emulated. Under ``max`` a debian-13 boot took about 8 s longer on average
# until the SSH key login (5 pairs of boots, 3.6-19.7 s apart: bench/README.md).
TCG_CPU_MODEL = "qemu64,ssse3=on,sse4.1=on,sse4.2=on,popcnt=on,rdrand=on,svm=off"
# Under TCG only: a 256 MiB translation cache (QEMU's default on a 64-bit host is 1 GiB) and the guest's
# RAM from a memfd (shared memory, in 4 KiB pages). Measured together on debian-13 boots (bench/README.md):
# QEMU's resident memory at the SSH login went from 1.45 to 0.62 GB, and the login medians from 52.2 to
# 48.8 s under SeaBIOS and from 53.0 to 48.4 s under OVMF.
TCG_TB_SIZE_MB = 256
TCG_RAM_ID = "vmi-ram"
# Printed at KERN_EMERG (so even with `quiet`) once the kernel has come all the way to mounting root.
PROBE_MARKER = b"VFS: Unable to mount root fs"


class Accel(enum.StrEnum):
    KVM = "kvm"
    TCG = "tcg"


@dataclass(frozen=True)
class QemuMachine:
    """The QEMU machine a build runs: Packer gets these as template variables, the probe and the boot
    tests as argv. ``ovmf_vars`` set means UEFI: OVMF's code read-only and this VM's own copy of the
    variable store as the two pflash devices (``-machine pflash0/pflash1`` + ``-blockdev``, so Packer's
    own ``-drive`` arguments stay untouched)."""

    accel: Accel
    cpu_model: str
    machine_type: str = MACHINE_TYPE
    cpus: int = 2
    memory_mb: int = 1024
    note: str = ""  # why this accelerator (recorded in the build log and the manifest)
    ovmf_vars: Path | None = None
    ovmf_code: Path | None = None  # the firmware's code under UEFI; None: ``find_ovmf()``'s

    @property
    def uefi(self) -> bool:
        return self.ovmf_vars is not None

    def machine_option(self) -> str:
        """``-machine``'s value without the accelerator: the type, under TCG the guest RAM's backend,
        under UEFI the two pflash devices."""
        options = [self.machine_type]
        if self.accel is Accel.TCG:
            options.append(f"memory-backend={TCG_RAM_ID}")
        if self.ovmf_vars is not None:
            options.append("pflash0=vmi-ovmf-code,pflash1=vmi-ovmf-vars")
        return ",".join(options)

    def machine_args(self) -> list[list[str]]:
        """``-machine``, the accelerator and (under TCG) its tuning and RAM, then the firmware, as
        Packer ``qemuargs`` pairs. A ``-machine`` in ``qemuargs`` replaces Packer's own, so Packer's
        QEMU line and ``argv()`` agree. Under KVM QEMU's defaults stay."""
        if self.accel is Accel.KVM:
            machine = [["-machine", f"type={self.machine_option()},accel=kvm"]]
        else:
            machine = [
                ["-machine", f"type={self.machine_option()}"],
                ["-accel", f"tcg,tb-size={TCG_TB_SIZE_MB}"],
                ["-object", f"memory-backend-memfd,id={TCG_RAM_ID},size={self.memory_mb}M"],
            ]
        return machine + self.firmware_args()

    def firmware_args(self) -> list[list[str]]:
        """The extra QEMU arguments of UEFI firmware, as Packer ``qemuargs`` pairs."""
        if self.ovmf_vars is None:
            return []
        code = self.ovmf_code or find_ovmf().code
        return [
            ["-blockdev", f"driver=file,filename={code},node-name=vmi-ovmf-code,read-only=on"],
            ["-blockdev", f"driver=file,filename={self.ovmf_vars},node-name=vmi-ovmf-vars"],
        ]

    def argv(self) -> list[str]:
        """The machine part of a QEMU command line, as Packer's QEMU builder writes it."""
        return [
            *[arg for pair in self.machine_args() for arg in pair],
            "-cpu", self.cpu_model,
            "-m", f"{self.memory_mb}M",
            "-smp", str(self.cpus),
        ]  # fmt: skip

    def template_variables(self) -> dict[str, str]:
        return {
            "machine_qemuargs": json.dumps(self.machine_args()),
            "accelerator": self.accel.value,
            "machine_type": self.machine_type,
            "cpu_model": self.cpu_model,
            "cpus": str(self.cpus),
            "memory": str(self.memory_mb),
            # a KVM guest answers SSH within a minute; if it never does, the build falls back to TCG
            "ssh_timeout": "5m" if self.accel is Accel.KVM else "30m",
        }


def qemu_machine(accel: Accel, cpus: int = 2, memory_mb: int = 1024, ovmf_vars: Path | None = None) -> QemuMachine:
    """KVM passes the host CPU through; TCG emulates ``TCG_CPU_MODEL`` (x86-64-v2). With ``ovmf_vars``
    (this VM's writable copy of OVMF's variable store, see ``ovmf_vars_copy``) the machine boots UEFI on
    q35."""
    return QemuMachine(
        accel,
        "host" if accel is Accel.KVM else TCG_CPU_MODEL,
        machine_type=UEFI_MACHINE_TYPE if ovmf_vars is not None else MACHINE_TYPE,
        cpus=cpus,
        memory_mb=memory_mb,
        ovmf_vars=ovmf_vars,
    )


@dataclass(frozen=True)
class Ovmf:
    code: Path  # read-only, shared by every VM
    vars: Path  # the variable store's template
    version: str  # the Debian package's version ("unknown" if no record says)

    def describe(self) -> str:
        return f"OVMF {self.version} ({self.code.parent})"


@functools.cache
def find_ovmf(dirs: Sequence[Path] = OVMF_DIRS) -> Ovmf:
    """The UEFI firmware builds and boot tests run: the first folder of ``dirs`` with both files."""
    for folder in dirs:
        code, store = folder / OVMF_CODE_NAME, folder / OVMF_VARS_NAME
        if code.is_file() and store.is_file():
            return Ovmf(code, store, _ovmf_version(folder))
    raise ConfigError(
        f"{dirs[-1] / OVMF_CODE_NAME}: UEFI firmware not installed",
        hint="run scripts/setup (it installs Debian's ovmf package and a current OVMF in .venv/share/OVMF)",
    )


def _ovmf_version(folder: Path) -> str:
    """scripts/setup records the version next to the files it fetched; else dpkg knows the system's."""
    record = folder / "VERSION"
    if record.is_file():
        return record.read_text(encoding="utf-8", errors="replace").strip()[:100] or "unknown"
    if shutil.which("dpkg-query") is None:
        return "unknown"
    owner = run.run(["dpkg-query", "-W", "-f=${Version}", "ovmf"], check=False, timeout=30)
    return owner.stdout.strip() if owner.returncode == 0 and owner.stdout.strip() else "unknown"


def ovmf_vars_copy(target: Path, ovmf: Ovmf | None = None) -> Path:
    """A fresh, writable copy of the variable store of ``ovmf`` (default ``find_ovmf()``) for one VM
    (each VM writes its own)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile((ovmf or find_ovmf()).vars, target)
    return target


@dataclass(frozen=True)
class ProbeResult:
    accel: Accel
    ok: bool
    seconds: float
    reason: str  # why it failed, or what it reached


@dataclass(frozen=True)
class AccelChoice:
    accel: Accel
    reason: str  # one line: why this accelerator (recorded in the build log and manifest)


def probe_kernel() -> Path | None:
    """The newest host kernel image (Debian's linux-image-amd64, installed by scripts/setup)."""
    kernels = sorted(Path("/boot").glob("vmlinuz-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    return next((k for k in kernels if os.access(k, os.R_OK)), None)


def probe(machine: QemuMachine, kernel: Path, timeout: float) -> ProbeResult:
    """Boot ``kernel`` on ``machine`` until it panics for want of a root filesystem (``panic=-1`` with
    ``-no-reboot`` makes QEMU exit there); ok if the marker is on the serial console within ``timeout``."""
    qemu = run.find_tool("qemu-system-x86_64")
    with tempfile.TemporaryDirectory(prefix="vmi-accel-") as tmp:
        serial = Path(tmp) / "serial.log"
        argv = [
            qemu, *machine.argv(),
            "-nodefaults", "-display", "none", "-no-reboot",
            "-kernel", str(kernel),
            "-append", "console=ttyS0 panic=-1 quiet",
            "-serial", f"file:{serial}",
        ]  # fmt: skip
        start = time.monotonic()
        try:
            res = run.run(argv, check=False, timeout=timeout)
        except CommandError:
            return ProbeResult(machine.accel, False, timeout, f"the guest kernel made no progress in {timeout:.0f}s")
        seconds = time.monotonic() - start
        console = serial.read_bytes() if serial.is_file() else b""
    if PROBE_MARKER in console:
        return ProbeResult(machine.accel, True, seconds, f"kernel booted in {seconds:.1f}s")
    if res.returncode != 0:
        lines = [ln.strip() for ln in res.stderr.splitlines() if ln.strip() and "warning:" not in ln]
        detail = lines[0] if lines else f"exit code {res.returncode}"
        detail = re.sub(r"^\S*qemu-system-x86_64: ", "", detail)
        return ProbeResult(machine.accel, False, seconds, f"QEMU failed to start: {detail}")
    return ProbeResult(machine.accel, False, seconds, "the guest kernel stopped before mounting root")


def _kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


@functools.cache
def _auto_choice(cpus: int, memory_mb: int) -> AccelChoice:
    """Probe once per process: KVM first (a broken KVM fails fast or hits its bound), then TCG for
    the comparison only if KVM worked."""
    if not _kvm_usable():
        return AccelChoice(Accel.TCG, "tcg (/dev/kvm is not usable)")
    kernel = probe_kernel()
    if kernel is None:
        return AccelChoice(Accel.TCG, "tcg (no kernel in /boot to probe KVM with: scripts/setup installs one)")
    kvm = probe(qemu_machine(Accel.KVM, cpus, memory_mb), kernel, KVM_PROBE_TIMEOUT)
    log.debug("accel probe: %s", kvm)
    if not kvm.ok:
        return AccelChoice(Accel.TCG, f"tcg (kvm: {kvm.reason})")
    tcg = probe(qemu_machine(Accel.TCG, cpus, memory_mb), kernel, TCG_PROBE_TIMEOUT)
    log.debug("accel probe: %s", tcg)
    if tcg.ok and kvm.seconds > tcg.seconds * KVM_MAX_SHARE_OF_TCG:
        return AccelChoice(
            Accel.TCG, f"tcg (kvm is not clearly faster: kernel booted in {kvm.seconds:.1f}s vs {tcg.seconds:.1f}s)"
        )
    versus = f"{tcg.seconds:.1f}s under tcg" if tcg.ok else f"tcg: {tcg.reason}"
    return AccelChoice(Accel.KVM, f"kvm (kernel booted in {kvm.seconds:.1f}s vs {versus})")


def choose_accel(setting: str, cpus: int = 2, memory_mb: int = 1024) -> AccelChoice:
    """``auto`` -> KVM if the probe proves it clearly faster on the build's machine, else TCG;
    ``kvm``/``tcg`` are taken as asked."""
    if setting == "tcg":
        return AccelChoice(Accel.TCG, "tcg (as configured)")
    if setting == "kvm":
        if not _kvm_usable():
            raise ConfigError(
                "vmi.accel: kvm was asked for but /dev/kvm is not usable",
                hint="set vmi.accel (or VMI_ACCEL) to auto or tcg",
            )
        return AccelChoice(Accel.KVM, "kvm (as configured)")
    if setting != "auto":
        raise ConfigError(f"vmi.accel: {setting!r} is not one of auto, kvm, tcg")
    choice = _auto_choice(cpus, memory_mb)
    log.info("accelerator: %s", choice.reason)
    return choice
