"""The boot-time split the boot tests record and bench/boot_timing.py prints, from what the guest's
systemd reports (no VM here: the parsing and the arithmetic)."""

from __future__ import annotations

import pytest

from .guest import PHASES, SAMPLE_SHOWN, BootTiming, boot_timing, median_timings, parse_milestones

SHOWN = SAMPLE_SHOWN


def test_milestones_are_seconds_since_the_kernel_started() -> None:
    assert parse_milestones(SHOWN) == {
        "cloud-init-main.service": 30.5,
        "ssh.service": 52.0,  # sshd.service never started (0): absent, not 0
        "userspace": 9.0,
        "uptime": 60.5,
    }


def test_phases_add_up_to_the_login_time() -> None:
    # the uptime (60.5 s) was read 68 s after QEMU started: 7.5 s went before the kernel
    timing = boot_timing("bios", 70.0, parse_milestones(SHOWN), 68.0)
    assert (timing.firmware_loader, timing.kernel_initramfs, timing.to_cloud_init) == (7.5, 9.0, 21.5)
    assert (timing.cloud_init_to_sshd, timing.sshd_to_login) == (21.5, 10.5)
    parts = timing.firmware_loader + timing.kernel_initramfs + timing.to_cloud_init
    assert parts + timing.cloud_init_to_sshd + timing.sshd_to_login == pytest.approx(timing.ssh_login)


def test_without_cloud_init_main_the_cloud_init_phase_starts_at_systemd() -> None:
    # cloud-init before 24.3 (bookworm) has no single process: its stages all count after systemd
    shown = SHOWN.replace("cloud-init-main.service", "cloud-init-local.service")
    timing = boot_timing("uefi", 70.0, parse_milestones(shown), 68.0)
    assert (timing.to_cloud_init, timing.cloud_init_to_sshd) == (0.0, 43.0)


def test_a_boot_whose_sshd_never_started_is_an_error() -> None:
    shown = SHOWN.replace("Id=ssh.service", "Id=other.service")
    with pytest.raises(AssertionError, match="no sshd unit became active"):
        boot_timing("bios", 70.0, parse_milestones(shown), 68.0)


def test_an_ab_summary_is_the_median_of_each_phase_per_label() -> None:
    def timing(seconds: float) -> BootTiming:
        return BootTiming("bios", *(seconds + i for i in range(len(PHASES))))

    rows = [("A/bios", timing(40)), ("B/bios", timing(30)), ("A/bios", timing(90)), ("B/bios", timing(31))]
    rows += [("A/bios", timing(41))]
    summary = median_timings(rows)
    assert [label for label, _ in summary] == ["A/bios x3", "B/bios x2"]  # first-seen order, with the count
    assert summary[0][1] == timing(41)  # the median, not swayed by the one slow boot (a mean: 57)
    assert summary[1][1] == timing(30.5)
