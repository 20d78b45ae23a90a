"""Boot a built image in QEMU (TCG) with a NoCloud seed, the way a cloud would, and talk to it over SSH.

The disk is used through a throwaway qcow2 overlay, so the image under test is never modified.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.builder.accel import choose_accel, ovmf_vars_copy, qemu_machine
from pipeline.run import spawn

SSH_OPTIONS = [
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "BatchMode=yes",
    "-o", "ConnectTimeout=15",
    "-o", "LogLevel=ERROR",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Guest:
    port: int
    key: Path
    serial_log: Path

    def ssh(self, user: str, command: str, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        argv = ["ssh", *SSH_OPTIONS, *extra, "-i", str(self.key), "-p", str(self.port), f"{user}@127.0.0.1", command]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    def wait_for_ssh(self, user: str, deadline_s: float) -> float:
        """Seconds until ``user`` could log in with the key; fails the test with the serial log if never."""
        start = time.monotonic()
        last = None
        while time.monotonic() - start < deadline_s:
            last = self.ssh(user, "true", timeout=60)
            if last.returncode == 0:
                return time.monotonic() - start
            time.sleep(2)
        tail = self.serial_log.read_text(errors="replace")[-4000:] if self.serial_log.exists() else ""
        raise AssertionError(f"no SSH login as {user} within {deadline_s}s: {last and last.stderr}\n{tail}")


@contextlib.contextmanager
def boot(
    disk: Path, seed_iso: Path, key: Path, workdir: Path, memory_mb: int = 1024, firmware: str = "bios"
) -> Iterator[Guest]:
    """Boot ``disk`` (qcow2) through an overlay with ``seed_iso`` as CD under ``firmware`` (``bios``:
    SeaBIOS; ``uefi``: OVMF on q35 with this guest's own copy of the variable store); yields a ``Guest``."""
    overlay = workdir / "overlay.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(disk.resolve()), "-F", "qcow2", str(overlay)], check=True
    )
    port = free_port()
    serial = workdir / "serial.log"
    # the machine the build itself runs on this host (auto: KVM only where the probe proves it)
    # (the same QemuMachine, firmware included, that Packer gets: pipeline.builder.accel)
    ovmf_vars = ovmf_vars_copy(workdir / "OVMF_VARS.fd") if firmware == "uefi" else None
    machine = qemu_machine(choose_accel("auto", 2, memory_mb).accel, 2, memory_mb, ovmf_vars=ovmf_vars)
    argv = [
        "qemu-system-x86_64",
        *machine.argv(),
        "-display", "none",
        "-nodefaults",
        "-serial", f"file:{serial}",
        "-drive", f"file={overlay},if=virtio,format=qcow2,discard=unmap",
        "-cdrom", str(seed_iso),
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-pci,netdev=n0,romfile=",  # no PXE ROM: OVMF would try the network first
    ]  # fmt: skip
    with spawn(argv, log_path=workdir / "qemu.log"):
        yield Guest(port, key, serial)
