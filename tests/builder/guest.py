"""Boot a built image in QEMU (TCG) with a NoCloud seed, the way a cloud would, and talk to it over SSH.

The disk is used through a throwaway qcow2 overlay, so the image under test is never modified.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from pipeline.builder.accel import Accel, Ovmf, choose_accel, find_ovmf, ovmf_vars_copy, qemu_machine
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


POLL_SECONDS = 0.5  # between SSH attempts: the measured time is at most this late
SSH_BANNER_WAIT_S = 15  # how long an attempt waits for sshd's banner once the guest's network is up
EARLY_BANNER_WAIT_S = 3  # ... and before: what it waits for then is a SYN that slirp lost


def guest_answered(stderr: str) -> bool:
    """Whether a failed ``ssh`` attempt (its stderr) reached the guest: the guest reset or closed the
    connection, or sshd answered and refused. Not when QEMU was not listening yet (refused on the host) or
    nothing came back before ConnectTimeout."""
    text = stderr.strip()
    return bool(text) and "timed out" not in text and "Connection refused" not in text


PHASES = (  # BootTiming's fields in boot order, with what each covers
    ("firmware_loader", "firmware + boot loader (reads kernel + initramfs)"),
    ("kernel_initramfs", "kernel + initramfs, until systemd in the root"),
    ("to_cloud_init", "systemd until cloud-init's process is ready"),
    ("cloud_init_to_sshd", "cloud-init stages until sshd is ready"),
    ("sshd_to_login", "sshd ready until the key login"),
    ("ssh_login", "QEMU start until SSH key login"),
)


@dataclass(frozen=True)
class BootTiming:
    """Where the time from QEMU's start to the first SSH key login went, in seconds.

    ``firmware_loader`` is measured on the host (login time minus the guest's uptime); the rest from
    the guest's own monotonic timestamps (systemd's, which start at the kernel's start)."""

    firmware: str
    ssh_login: float  # QEMU started -> the key login succeeded
    firmware_loader: float  # SeaBIOS/OVMF and GRUB, reading the kernel and initramfs
    kernel_initramfs: float  # kernel start -> systemd in the real root (initramfs-tools runs no systemd)
    to_cloud_init: float  # -> cloud-init's process ready (imports done); 0 without cloud-init-main
    cloud_init_to_sshd: float  # -> sshd ready (cloud-init local + network stages, host keys, sshd start)
    sshd_to_login: float  # -> the login (our polling, key exchange, user lookup)

    def record(self, label: str, path: Path | None = None) -> None:
        """Append this timing as one JSON line to ``path`` (default: ``boot-timings.jsonl`` in the test
        output), where ``bench/boot_timing.py --smoke`` prints it from."""
        path = path or Path(os.environ.get("VMI_TEST_OUTPUT", "work/test-output")) / "boot-timings.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        line = {"label": label, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **asdict(self)}
        line["load"] = os.getloadavg()[0]
        if self.firmware == "uefi":
            line["ovmf"] = find_ovmf().describe()  # which OVMF: its own start is part of the figure
        with path.open("a") as f:
            f.write(json.dumps(line) + "\n")


def median_timings(rows: Iterable[tuple[str, BootTiming]]) -> list[tuple[str, BootTiming]]:
    """Per label (in the order first seen), the median of each phase over that label's boots: an A/B's
    summary, less swayed by one slow boot than a mean (each phase on its own, so they need not add up)."""
    groups: dict[str, list[BootTiming]] = {}
    for label, timing in rows:
        groups.setdefault(label, []).append(timing)
    summary = []
    for label, timings in groups.items():
        values = {field: round(statistics.median(getattr(t, field) for t in timings), 2) for field, _ in PHASES}
        summary.append((f"{label} x{len(timings)}", BootTiming(firmware=timings[0].firmware, **values)))
    return summary


# systemd's monotonic timestamps (microseconds since the kernel started) of the boot's milestones
_SHOW = (
    "systemctl show -p Id -p ActiveEnterTimestampMonotonic cloud-init-main.service ssh.service sshd.service; "
    "systemctl show -p UserspaceTimestampMonotonic; cat /proc/uptime"
)


# what ``_SHOW`` printed in one boot (made-up figures: the tests' and the bench's smoke input)
SAMPLE_SHOWN = """Id=cloud-init-main.service
ActiveEnterTimestampMonotonic=30500000

Id=ssh.service
ActiveEnterTimestampMonotonic=52000000

Id=sshd.service
ActiveEnterTimestampMonotonic=0

UserspaceTimestampMonotonic=9000000
60.50 90.10
"""


def parse_milestones(text: str) -> dict[str, float]:
    """``_SHOW``'s output as seconds since the kernel started: ``userspace``, ``uptime``
    and each unit id that has become active (a unit that does not exist or never started is absent)."""
    found: dict[str, float] = {}
    unit = None
    for line in text.splitlines():
        key, _, value = line.strip().partition("=")
        if key == "Id":
            unit = value
        elif key == "ActiveEnterTimestampMonotonic" and unit and value.isdigit() and int(value) > 0:
            found[unit] = int(value) / 1e6
        elif key == "UserspaceTimestampMonotonic" and value.isdigit():
            found["userspace"] = int(value) / 1e6
        elif not value and line.strip() and line.split()[0].replace(".", "", 1).isdigit():
            found["uptime"] = float(line.split()[0])
    return found


def boot_timing(firmware: str, login: float, milestones: dict[str, float], host_elapsed: float) -> BootTiming:
    """The phases of one boot from ``parse_milestones`` read at ``host_elapsed`` s after QEMU started,
    the key login having succeeded at ``login`` s."""
    before_kernel = host_elapsed - milestones["uptime"]
    userspace = milestones["userspace"]
    sshd = milestones.get("ssh.service", milestones.get("sshd.service"))
    if sshd is None:
        raise AssertionError(f"no sshd unit became active: {milestones}")
    cloud_init = milestones.get("cloud-init-main.service", userspace)
    return BootTiming(
        firmware=firmware,
        ssh_login=round(login, 2),
        firmware_loader=round(before_kernel, 2),
        kernel_initramfs=round(userspace, 2),
        to_cloud_init=round(cloud_init - userspace, 2),
        cloud_init_to_sshd=round(sshd - cloud_init, 2),
        sshd_to_login=round(login - before_kernel - sshd, 2),
    )


@dataclass
class Guest:
    port: int
    key: Path
    serial_log: Path
    firmware: str = "bios"
    started: float = 0.0  # time.monotonic() when QEMU was started
    login_at: float | None = None  # seconds after ``started`` of the first successful key login
    accel: Accel = Accel.TCG  # the accelerator the guest runs under
    ovmf: Ovmf | None = None  # the UEFI firmware it boots (None: SeaBIOS)

    def ssh_argv(self, user: str, command: str, *extra: str) -> list[str]:
        """``ssh`` running ``command`` as ``user``; ``extra`` options come first, as ssh takes the first
        value it is given for an option (so they override ``SSH_OPTIONS``)."""
        return ["ssh", *extra, *SSH_OPTIONS, "-i", str(self.key), "-p", str(self.port), f"{user}@127.0.0.1", command]

    def ssh(self, user: str, command: str, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        argv = self.ssh_argv(user, command, *extra)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    def attempt(self, user: str, banner_wait_s: float) -> subprocess.CompletedProcess[str]:
        """One key login as ``user`` that waits at most ``banner_wait_s`` for sshd's banner; its stderr
        says how it ended (LogLevel=INFO: with ERROR, a connection the guest closed says nothing)."""
        return self.ssh(user, "true", "-o", f"ConnectTimeout={banner_wait_s:g}", "-o", "LogLevel=INFO", timeout=60)

    def wait_for_ssh(self, user: str, deadline_s: float) -> float:
        """Seconds from QEMU's start until ``user`` could log in with the key; fails the test with the
        serial log if never.

        QEMU's user network accepts each connection on the host at once and only then sends its SYN to
        the guest. A SYN sent before the guest has its address is lost, and slirp resends it only seconds
        later, so an attempt made then hangs while ``ssh`` waits for the banner (ConnectTimeout). Until
        the guest has answered an attempt, each waits ``EARLY_BANNER_WAIT_S``; afterwards the usual 15 s.
        With 15 s throughout, the login was measured up to ~14 s late, always at the same point of the
        attempts' cycle (bench/README.md)."""
        last = None
        answered = False
        while time.monotonic() - self.started < deadline_s:
            wait = SSH_BANNER_WAIT_S if answered else EARLY_BANNER_WAIT_S
            last = self.attempt(user, wait)
            if last.returncode == 0:
                self.login_at = time.monotonic() - self.started
                return self.login_at
            answered = answered or guest_answered(last.stderr)
            time.sleep(POLL_SECONDS)
        tail = self.serial_log.read_text(errors="replace")[-4000:] if self.serial_log.exists() else ""
        raise AssertionError(f"no SSH login as {user} within {deadline_s}s: {last and last.stderr}\n{tail}")

    def timing(self, user: str) -> BootTiming:
        """Where this boot's time went (call right after ``wait_for_ssh``)."""
        assert self.login_at is not None, "wait_for_ssh first"
        sent = time.monotonic() - self.started
        shown = self.ssh(user, _SHOW, timeout=120)
        elapsed = (sent + time.monotonic() - self.started) / 2  # the uptime was read about half-way
        assert shown.returncode == 0, shown.stderr
        return boot_timing(self.firmware, self.login_at, parse_milestones(shown.stdout), elapsed)


GROW_MB = 1024  # the boot disk is this much larger than the image, as on a site


def virtual_size(disk: Path) -> int:
    """The disk size ``disk`` (qcow2) presents to a guest, in bytes."""
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", str(disk)], capture_output=True, text=True, check=True, timeout=60
    )
    return int(json.loads(info.stdout)["virtual-size"])


@contextlib.contextmanager
def boot(
    disk: Path,
    seed_iso: Path,
    key: Path,
    workdir: Path,
    memory_mb: int = 1024,
    firmware: str = "bios",
    grow_mb: int = GROW_MB,
    cpu_model: str | None = None,
    ovmf: Ovmf | None = None,
) -> Iterator[Guest]:
    """Boot ``disk`` (qcow2) through an overlay ``grow_mb`` larger than the image (a site's disk is larger
    than the image: cloud-init grows the root into it) with ``seed_iso`` as CD under ``firmware``
    (``bios``: SeaBIOS; ``uefi``: OVMF on q35 with this guest's own copy of the variable store); yields a
    ``Guest``. ``cpu_model`` replaces the machine's ``-cpu`` and ``ovmf`` the firmware ``find_ovmf()``
    finds (bench/boot_timing.py --cpu and --ovmf compare them)."""
    overlay = workdir / "overlay.qcow2"
    size = virtual_size(disk) + grow_mb * 2**20
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(disk.resolve()), "-F", "qcow2", str(overlay), str(size)],
        check=True,
    )
    port = free_port()
    serial = workdir / "serial.log"
    # the machine the build itself runs on this host (auto: KVM only where the probe proves it)
    # (the same QemuMachine, firmware included, that Packer gets: pipeline.builder.accel)
    firmware_used = (ovmf or find_ovmf()) if firmware == "uefi" else None
    ovmf_vars = ovmf_vars_copy(workdir / "OVMF_VARS.fd", firmware_used) if firmware_used else None
    machine = qemu_machine(choose_accel("auto", 2, memory_mb).accel, 2, memory_mb, ovmf_vars=ovmf_vars)
    machine = replace(machine, ovmf_code=firmware_used.code if firmware_used else None)
    if cpu_model is not None:
        machine = replace(machine, cpu_model=cpu_model)
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
    started = time.monotonic()
    with spawn(argv, log_path=workdir / "qemu.log"):
        yield Guest(port, key, serial, firmware, started, accel=machine.accel, ovmf=firmware_used)
