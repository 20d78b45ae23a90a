"""Which QEMU accelerator a build uses: KVM only where a probe proves it runs guest code, TCG otherwise.

``/dev/kvm`` can exist and open fine yet hang or crawl when a vCPU runs (nested virtualisation on a
busy host, as on this project's machines), so the probe boots a 7-byte boot sector that writes to
QEMU's isa-debug-exit port and must make QEMU exit within a few seconds.
"""

from __future__ import annotations

import enum
import functools
import os
import tempfile
from pathlib import Path

from pipeline import run
from pipeline.errors import CommandError, ConfigError
from pipeline.log import log

PROBE_TIMEOUT = 5.0
# mov al,1 ; out 0xf4,al ; hlt ; jmp $-1  -> QEMU exits with status (1 << 1) | 1 = 3
_BOOT_CODE = bytes([0xB0, 0x01, 0xE6, 0xF4, 0xF4, 0xEB, 0xFD])
_EXPECTED_EXIT = 3


class Accel(enum.StrEnum):
    KVM = "kvm"
    TCG = "tcg"


def probe_boot_sector() -> bytes:
    """A bootable 512-byte sector that makes QEMU exit at once through isa-debug-exit."""
    return _BOOT_CODE + bytes(510 - len(_BOOT_CODE)) + b"\x55\xaa"


def accel_runs_guest(accel: Accel, timeout: float = PROBE_TIMEOUT) -> bool:
    """True if QEMU with ``accel`` boots the probe sector and exits as it asks, within ``timeout``."""
    qemu = run.find_tool("qemu-system-x86_64")
    with tempfile.TemporaryDirectory(prefix="vmi-accel-") as tmp:
        image = Path(tmp) / "probe.img"
        image.write_bytes(probe_boot_sector())
        argv = [
            qemu,
            "-machine",
            f"pc,accel={accel.value}",
            "-display",
            "none",
            "-nodefaults",
            "-no-reboot",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-drive",
            f"format=raw,file={image},if=ide",
        ]
        try:
            res = run.run(argv, check=False, timeout=timeout)
        except CommandError:  # timed out: the accelerator hangs or crawls
            log.debug("accel probe: %s did not finish within %.0fs", accel, timeout)
            return False
    log.debug("accel probe: %s exit code %d", accel, res.returncode)
    return res.returncode == _EXPECTED_EXIT


@functools.cache
def _kvm_works() -> bool:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    return accel_runs_guest(Accel.KVM)


def choose_accel(setting: str) -> Accel:
    """``auto`` -> KVM if the probe proves it works, else TCG; ``kvm``/``tcg`` are taken as asked."""
    if setting == "tcg":
        return Accel.TCG
    if setting == "kvm":
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            raise ConfigError(
                "vmi.accel: kvm was asked for but /dev/kvm is not usable",
                hint="set vmi.accel (or VMI_ACCEL) to auto or tcg",
            )
        return Accel.KVM
    if setting != "auto":
        raise ConfigError(f"vmi.accel: {setting!r} is not one of auto, kvm, tcg")
    chosen = Accel.KVM if _kvm_works() else Accel.TCG
    log.info("accelerator: %s%s", chosen, "" if chosen is Accel.KVM else " (KVM not usable here)")
    return chosen
