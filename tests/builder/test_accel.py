"""Accelerator choice on real QEMU: the probe boots the host kernel on the build's own machine, a
machine QEMU cannot start or a guest that makes no progress is never chosen, and a build whose KVM
attempt fails is retried once under TCG (a real Packer run)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.appliance import find_appliance
from pipeline.builder import PackerJob, run_packer_with_fallback, template_variables
from pipeline.builder.accel import (
    TCG_CPU_MODEL,
    Accel,
    choose_accel,
    probe,
    probe_kernel,
    qemu_machine,
)
from pipeline.errors import ConfigError
from pipeline.settings import Settings

from .guest import boot

KERNEL = probe_kernel()
needs_kernel = pytest.mark.skipif(KERNEL is None, reason="scripts/setup installs linux-image-amd64 in /boot")


def test_one_machine_for_probe_and_packer() -> None:
    kvm, tcg = qemu_machine(Accel.KVM, 2, 1024), qemu_machine(Accel.TCG, 2, 1024)
    assert kvm.argv() == ["-machine", "type=pc,accel=kvm", "-cpu", "host", "-m", "1024M", "-smp", "2"]
    # under TCG only: a 256 MiB translation cache and the guest RAM from a memfd of -m's size
    assert tcg.argv() == [
        "-machine", "type=pc,memory-backend=vmi-ram",
        "-accel", "tcg,tb-size=256",
        "-object", "memory-backend-memfd,id=vmi-ram,size=1024M",
        "-cpu", TCG_CPU_MODEL, "-m", "1024M", "-smp", "2",
    ]  # fmt: skip
    variables = tcg.template_variables()
    assert (variables["accelerator"], variables["machine_type"], variables["cpu_model"]) == ("tcg", "pc", TCG_CPU_MODEL)
    for machine in (kvm, tcg):  # Packer's -machine is replaced by the machine's own, the same as argv()'s
        assert json.loads(machine.template_variables()["machine_qemuargs"]) == machine.machine_args()
        assert machine.argv()[: 2 * len(machine.machine_args())] == sum(machine.machine_args(), [])
    assert kvm.template_variables()["ssh_timeout"] == "5m" and variables["ssh_timeout"] == "30m"


def test_every_template_runs_the_machine_the_pipeline_passes(project_root: Path) -> None:
    templates = sorted(project_root.glob("packer_templates/*/*.pkr.hcl"))
    assert templates == [project_root / "packer_templates/_shared/qemu.pkr.hcl"]
    for template in templates:
        text = template.read_text()
        assert "accelerator" in text and re.search(r"machine_type\s*=\s*var\.machine_type", text), template
        assert '["-cpu", var.cpu_model]' in text and re.search(r"ssh_timeout\s*=\s*var\.ssh_timeout", text), template
        assert '"-cpu", "' not in text, f"{template}: a fixed CPU model would differ from what the probe ran"
        assert "var.machine_qemuargs)" in text, f"{template}: the machine the probe ran must reach qemuargs"
        assert '"-machine"' not in text and '"-accel"' not in text, template


@needs_kernel
def test_tcg_boots_the_host_kernel_to_the_marker() -> None:
    assert KERNEL is not None
    result = probe(qemu_machine(Accel.TCG), KERNEL, timeout=120)
    assert result.ok, result.reason
    assert result.reason.startswith("kernel booted in ")


@needs_kernel
def test_a_guest_without_progress_is_reported_not_waited_for() -> None:
    assert KERNEL is not None
    result = probe(qemu_machine(Accel.TCG), KERNEL, timeout=0.2)
    assert not result.ok
    assert result.reason == "the guest kernel made no progress in 0s"


@needs_kernel
def test_a_machine_qemu_cannot_start_is_reported_with_qemus_reason() -> None:
    assert KERNEL is not None
    broken = dataclasses.replace(qemu_machine(Accel.TCG), cpu_model="vmi-no-such-cpu")
    result = probe(broken, KERNEL, timeout=60)
    assert not result.ok
    assert result.reason.startswith("QEMU failed to start: ") and "vmi-no-such-cpu" in result.reason


@needs_kernel
def test_auto_chooses_a_machine_that_boots_the_real_kernel() -> None:
    assert KERNEL is not None
    choice = choose_accel("auto")
    assert choice.reason.startswith(f"{choice.accel.value} (")
    assert probe(qemu_machine(choice.accel), KERNEL, timeout=120).ok, choice.reason
    if choice.accel is Accel.TCG and os.access("/dev/kvm", os.R_OK | os.W_OK):
        # KVM was there and rejected: the reason says what the probe saw (this project's machines:
        # "QEMU failed to start: ... failed to set MSR 0x10a" or "made no progress")
        assert choice.reason.startswith("tcg (kvm") and len(choice.reason) > len("tcg (kvm: )")


def test_explicit_settings() -> None:
    assert choose_accel("tcg").accel is Accel.TCG
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        assert choose_accel("kvm").accel is Accel.KVM
    else:
        with pytest.raises(ConfigError, match="kvm was asked for"):
            choose_accel("kvm")
    with pytest.raises(ConfigError, match="vmi.accel"):
        choose_accel("hvf")


# A Packer template with the pipeline's variables whose guest is the host kernel: it boots, panics for
# want of a root filesystem and QEMU exits (-no-reboot), which Packer's `none` communicator waits for.
_KERNEL_SOURCE = """
source "qemu" "appliance" {{
  iso_url          = var.base_image
  iso_checksum     = "none"
  disk_image       = true
  skip_resize_disk = true
  format           = "qcow2"
  accelerator      = var.accelerator
  machine_type     = var.machine_type
  cpus             = var.cpus
  memory           = var.memory
  headless         = true
  vnc_bind_address = "127.0.0.1"
  output_directory = var.output_directory
  vm_name          = var.vm_name
  qemuargs = [
    ["-cpu", var.cpu_model],
    ["-kernel", "{kernel}"],
    ["-append", "console=ttyS0 panic=-1 quiet"],
    ["-no-reboot"],
    ["-serial", "file:${{var.serial_log}}"],
  ]
  communicator     = "none"
  shutdown_timeout = "5m"
  boot_wait        = "1s"
}}

build {{
  sources = ["source.qemu.appliance"]
}}
"""


@pytest.mark.slow
@needs_kernel
def test_a_failed_kvm_attempt_is_retried_once_under_tcg(scratch_project: Settings, tmp_path: Path) -> None:
    settings = scratch_project
    template = settings.templates_dir / "_shared" / "qemu.pkr.hcl"
    variables = "\n".join(re.findall(r'^variable "[a-z_]+" \{.*?^\}', template.read_text(), re.S | re.M))
    template.write_text(variables + _KERNEL_SOURCE.format(kernel=KERNEL))
    appliance = find_appliance(settings.templates_dir, "debian-12", settings.provisioners_dir)
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    work = tmp_path / "work"
    work.mkdir()
    # a KVM machine QEMU cannot start on any host (as `-cpu host` aborts on this project's machines)
    kvm = dataclasses.replace(qemu_machine(Accel.KVM), cpu_model="vmi-no-such-cpu", note="kvm (as configured)")
    log = io.StringIO()
    job = PackerJob(appliance, settings, base, tmp_path / "out" / "disk.qcow2", work, log)
    result, machine, note = run_packer_with_fallback(job, kvm)
    assert machine.accel is Accel.TCG and machine.cpu_model == TCG_CPU_MODEL
    assert re.fullmatch(r"kvm failed \(.*Qemu failed to start.*\); using tcg", note), note
    assert (tmp_path / "out" / "disk.qcow2").is_file() and result.artifacts
    assert log.getvalue().count("Qemu failed to start") >= 1
    variables = template_variables(appliance, settings, work, base, work / "x", "d", work, work)
    assert variables["cpu_model"] == TCG_CPU_MODEL


def test_the_boot_harness_runs_the_cpu_model_it_is_given(tmp_path: Path) -> None:
    """bench/boot_timing.py --cpu compares CPU models through the boot tests' harness: the model it is
    given is the one QEMU is asked to run (an unknown one makes QEMU say so and stop)."""
    disk, seed = tmp_path / "disk.qcow2", tmp_path / "seed.iso"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    seed.write_bytes(b"")
    log = tmp_path / "qemu.log"
    with boot(disk, seed, tmp_path / "key", tmp_path, cpu_model="vmi-no-such-cpu"):
        deadline = time.monotonic() + 60
        while "vmi-no-such-cpu" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
            time.sleep(0.1)
    assert "unable to find CPU model 'vmi-no-such-cpu'" in log.read_text()
