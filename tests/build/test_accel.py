"""Accelerator choice: the probe really runs QEMU; a setting outside auto|kvm|tcg is refused."""

from __future__ import annotations

import os

import pytest

from pipeline.build.accel import Accel, accel_runs_guest, choose_accel, probe_boot_sector
from pipeline.errors import ConfigError


def test_probe_sector_is_a_boot_sector() -> None:
    sector = probe_boot_sector()
    assert len(sector) == 512 and sector.endswith(b"\x55\xaa")


def test_tcg_probe_boots_the_sector_and_exits() -> None:
    # real QEMU under TCG: the boot sector asks isa-debug-exit to stop the machine with status 3
    assert accel_runs_guest(Accel.TCG)


def test_probe_fails_when_the_guest_cannot_finish_in_time() -> None:
    # a zero-ish budget cannot be met by any accelerator: the probe must report failure, not hang
    assert not accel_runs_guest(Accel.TCG, timeout=0.001)


def test_explicit_settings_win() -> None:
    assert choose_accel("tcg") is Accel.TCG
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        assert choose_accel("kvm") is Accel.KVM
    else:
        with pytest.raises(ConfigError, match="/dev/kvm"):
            choose_accel("kvm")


def test_auto_picks_an_accelerator_that_runs_guest_code() -> None:
    chosen = choose_accel("auto")
    assert accel_runs_guest(chosen)


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(ConfigError, match="vmi.accel"):
        choose_accel("hvf")
