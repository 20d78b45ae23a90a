"""Build stage: an appliance definition -> a hardened qcow2 + build manifest, with real Packer + QEMU.

``build_appliance()`` reads like the recipe it runs: inputs and cache check, base disk, seed and build
key, Packer, installed-package list, manifest, then one rename that makes the version appear. Until
that rename everything lives in a hidden ``.<version>.partial-*`` folder, so a failure never leaves
anything at a final output name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from pipeline import run
from pipeline.appliance import Appliance, BaseKind, Firmware, find_appliance, load_all
from pipeline.builder import packer
from pipeline.builder.accel import (
    TCG_CPU_MODEL,
    UEFI_MACHINE_TYPE,
    Accel,
    QemuMachine,
    choose_accel,
    find_ovmf,
    ovmf_vars_copy,
    qemu_machine,
)
from pipeline.builder.base import base_component, prepare_base
from pipeline.builder.cache import compute_inputs, find_up_to_date, inputs_digest, next_version
from pipeline.builder.disk import unmount_under
from pipeline.builder.licences import read_licences, with_licences
from pipeline.builder.seed import build_user_data, generate_ssh_key, meta_data, write_seed_dir
from pipeline.errors import BuildError, ConfigError, PipelineError
from pipeline.fsutil import hash_file
from pipeline.log import log, step
from pipeline.manifest import Artifact, BuildManifest, InstalledPackage, find_version
from pipeline.settings import Settings

BUILD_USER = "vmi-build"
LOG_NAME = "build/build.log"
GUEST_MEMORY_MB = 1024


@dataclass(frozen=True)
class BuildResult:
    appliance: str
    version: str
    version_dir: Path
    manifest: BuildManifest
    up_to_date: bool
    elapsed: float
    definition: Appliance  # the parsed appliance.yaml, handed on so no later stage parses it again

    @classmethod
    def load(cls, settings: Settings, definition: Appliance, version: str | None = None) -> BuildResult:
        """A built version as it is on disk (default: the newest): where a stopped recipe resumes."""
        version_dir, manifest = find_version(settings.output_dir, definition.name, version)
        return cls(definition.name, manifest.version, version_dir, manifest, True, 0.0, definition)

    @property
    def disk(self) -> Path:
        return self.version_dir / self.manifest.artifact("build-disk").name

    def summary(self) -> str:
        if self.up_to_date:
            return (
                f"{self.appliance} {self.version} is up to date (inputs {self.manifest.inputs_digest[:12]}): "
                f"{self.disk}\n  use --force to rebuild"
            )
        disk = self.manifest.artifact("build-disk")
        steps = ", ".join(f"{k} {v:.0f}s" for k, v in self.manifest.timings.items() if "." not in k and k != "total")
        return (
            f"built {self.appliance} {self.version} in {self.elapsed:.0f}s ({steps})\n"
            f"  disk:     {self.disk} ({disk.size / 2**20:.0f} MiB, sha256 {disk.sha256[:16]}...)\n"
            f"  manifest: {self.version_dir / 'manifest.json'} ({len(self.manifest.packages)} packages)\n"
            f"  log:      {self.version_dir / LOG_NAME}"
        )


def tool_versions(appliance: Appliance) -> dict[str, str]:
    """Versions of the tools that shape the image (recorded in the manifest, part of the cache key)."""
    tools = {
        "packer": run.tool_version([run.find_tool("packer"), "version"]),
        "qemu": run.tool_version([run.find_tool("qemu-system-x86_64"), "--version"]),
        "qemu-img": run.tool_version([run.find_tool("qemu-img"), "--version"]),
    }
    if appliance.base.kind is BaseKind.BOOTSTRAP:
        tools["mmdebstrap"] = run.tool_version([run.find_tool("mmdebstrap"), "--version"])
    if appliance.firmware is Firmware.UEFI:  # it builds under OVMF (bios and hybrid under SeaBIOS)
        tools["ovmf"] = find_ovmf().version
    return tools


def git_commit(root: Path) -> str | None:
    """HEAD of the checkout the build ran from, ``-dirty`` if it has uncommitted changes."""
    head = run.run(["git", "rev-parse", "HEAD"], cwd=root, check=False)
    if head.returncode != 0:
        return None
    dirty = run.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, check=False).stdout.strip()
    return head.stdout.strip() + ("-dirty" if dirty else "")


def build_inputs(
    settings: Settings, appliance: Appliance, tools: dict[str, str] | None = None
) -> tuple[str, dict[str, str]]:
    """``(inputs digest, components)`` a build of ``appliance`` would have now (cheap: no bootstrap,
    no download). Equal to a manifest's ``inputs_digest`` exactly when that build is up to date."""
    tools = tools if tools is not None else tool_versions(appliance)
    inputs = compute_inputs(appliance, settings.provisioners_dir, base_component(settings, appliance, tools), tools)
    return inputs_digest(inputs), inputs


def build_appliance(settings: Settings, name: str, version: str | None = None, force: bool = False) -> BuildResult:
    """Build ``name`` into ``<output>/<name>/<version>/`` unless a build of the same inputs exists."""
    return build_definition(
        settings, find_appliance(settings.templates_dir, name, settings.provisioners_dir), version, force
    )


def build_definition(
    settings: Settings, appliance: Appliance, version: str | None = None, force: bool = False
) -> BuildResult:
    """``build_appliance`` for an appliance already parsed (the recipe parses it once per release)."""
    start = time.monotonic()
    name = appliance.name
    if why := appliance.template_problem():
        raise ConfigError(why)
    tools = tool_versions(appliance)
    digest, inputs = build_inputs(settings, appliance, tools)
    out = settings.output_dir / name
    if not force and (found := find_up_to_date(out, digest)) and version in (None, found[1].version):
        log.info("%s: up to date (%s, inputs %s)", name, found[1].version, digest[:12])
        return BuildResult(name, found[1].version, found[0], found[1], True, time.monotonic() - start, appliance)
    version = version or next_version(out, dt.datetime.now(dt.UTC).date())
    final = out / version
    if final.exists() and not force:
        raise ConfigError(f"{final}: version {version} exists already", hint="use --force to replace it")
    machine = build_machine(appliance, settings)
    timings: dict[str, float] = {}
    disk_name = f"build/{name}-{version}.qcow2"
    with step(f"build {name} {version}"), _staging(out, version) as stage, _scratch(settings, name) as work:
        log_path = stage / LOG_NAME
        log_path.parent.mkdir(parents=True)
        with open(log_path, "w") as log_file, _log_to(log_file), _failures_named(settings, log_path, name, version):
            log.info("inputs digest %s, accelerator %s, tools: %s", digest, machine.accel, json.dumps(tools))
            with step("base", timings):
                base = prepare_base(settings, appliance, work / "base", log_file)
            with step("packer", timings):
                job = PackerJob(appliance, settings, base.disk, stage / disk_name, work, log_file)
                packer_run, machine, accel_note = run_packer_with_fallback(job, machine)
            timings.update({f"packer.{k}": v for k, v in packer_run.phase_durations().items()})
            with step("manifest", timings):
                packages = read_package_list(work / "packages.tsv")
                disk_artifact = _artifact(stage, disk_name, "build-disk", "qcow2")
            with step("licences", timings):  # read offline from the disk: the SBOM's licence fields
                packages = with_licences(packages, read_licences(stage / disk_name, "qcow2", packages, work))
        manifest = BuildManifest(
            appliance=name,
            version=version,
            created=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            inputs_digest=digest,
            inputs=inputs,
            git_commit=git_commit(settings.root),
            tools=tools,
            accel=machine.accel.value,
            accel_note=accel_note,
            os={"family": appliance.os.family.value, "name": appliance.os.name, "version": appliance.os.version},
            arch=appliance.arch.value,
            base=base.ref,
            packages=packages,
            artifacts=(disk_artifact, _artifact(stage, LOG_NAME, "log", "text")),
            timings={**timings, "total": round(time.monotonic() - start, 3)},
            firmware=appliance.firmware.value,
            image_properties=image_properties(appliance),
        )
        manifest.save(stage).chmod(0o644)
        stage.chmod(0o755)  # mkdtemp/mkstemp make them private; the version is for everyone to read
        _publish(stage, final)
    log.info("%s %s ready in %s", name, version, final)
    return BuildResult(name, version, final, manifest, False, time.monotonic() - start, appliance)


def image_properties(appliance: Appliance) -> dict[str, str]:
    """What a cloud must know to boot the disk: Glance's ``hw_firmware_type=uefi`` for a UEFI-only
    disk (BIOS is every cloud's default, and a hybrid disk boots under either)."""
    return {"hw_firmware_type": "uefi"} if appliance.firmware is Firmware.UEFI else {}


def build_machine(appliance: Appliance, settings: Settings) -> QemuMachine:
    """The QEMU machine the build runs (and the accelerator probe boots): vCPUs from the build host,
    memory from ``hardware.ram_min_mb``, the accelerator from ``vmi.accel``."""
    cpus = min(2, os.cpu_count() or 1)
    memory = max(GUEST_MEMORY_MB, appliance.hardware.ram_min_mb)
    choice = choose_accel(settings.accel, cpus, memory)
    machine = qemu_machine(choice.accel, cpus, memory)
    return dataclasses.replace(machine, note=choice.reason)


# Packer errors that mean the accelerator, not the appliance, failed: QEMU did not start, or the guest
# never answered SSH (a KVM guest that makes no progress). A failing provisioner is not retried.
_ACCEL_FAILURES = re.compile(r"Qemu failed to start|Error launching VM|Timeout waiting for SSH", re.IGNORECASE)


@dataclass(frozen=True)
class PackerJob:
    """What one Packer run of a build works on, whatever machine runs it (the TCG retry reuses it)."""

    appliance: Appliance
    settings: Settings
    base_disk: Path
    disk_out: Path  # where the finished disk lands
    work: Path  # the build's scratch folder: seed, build key, Packer's output and TMPDIR
    log_file: TextIO


def run_packer_with_fallback(job: PackerJob, machine: QemuMachine) -> tuple[packer.PackerRun, QemuMachine, str]:
    """Run Packer on ``machine``; if KVM fails to start QEMU or to reach SSH, say so in one line and
    retry once under TCG. Returns the run, the machine that produced the disk, and the note for the
    manifest."""
    try:
        return _run_packer(job, machine), machine, machine.note
    except BuildError as e:
        said = [ln.strip() for ln in (e.message + "\n" + e.log_tail).splitlines() if _ACCEL_FAILURES.search(ln)]
        if machine.accel is not Accel.KVM or not said:
            raise
        reason = re.sub(r"^.*?failed: |\s*Please run with PACKER_LOG.*$", "", said[0].removeprefix("==> "))
    note = f"kvm failed ({reason}); using tcg"
    log.warning("accelerator: %s", note)
    tcg = dataclasses.replace(qemu_machine(Accel.TCG, machine.cpus, machine.memory_mb), note=note)
    shutil.rmtree(job.work / "packer-out", ignore_errors=True)
    return _run_packer(job, tcg), tcg, note


def _run_packer(job: PackerJob, machine: QemuMachine) -> packer.PackerRun:
    """Seed + key, then ``packer build``; the disk lands at ``job.disk_out``. The key dies with ``job.work``."""
    if job.appliance.firmware is Firmware.UEFI and not machine.uefi:
        # a UEFI-only disk builds under OVMF; bios and hybrid disks build under SeaBIOS (the boot tests
        # prove a hybrid disk under both)
        vars_copy = ovmf_vars_copy(job.work / f"ovmf-vars-{machine.accel}.fd")
        log.info("firmware: %s", find_ovmf().describe())
        machine = dataclasses.replace(machine, machine_type=UEFI_MACHINE_TYPE, ovmf_vars=vars_copy)
    key = generate_ssh_key(job.work / f"key-{machine.accel}")
    seed = write_seed_dir(
        job.work / f"seed-{machine.accel}",
        meta_data(f"vmi-build-{uuid.uuid4()}", "vmi-build"),
        build_user_data(BUILD_USER, key.public_text),
    )
    out_dir = job.work / "packer-out"
    variables = template_variables(
        job.appliance, job.settings, job.work, job.base_disk, out_dir, job.disk_out.name, seed, key.private
    )
    variables.update(machine.template_variables())
    try:
        result = packer.packer_build(job.appliance.template_path, variables, job.work / "tmp", job.log_file)
    finally:
        serial = job.work / "serial.log"
        if serial.is_file():
            job.log_file.write("---- guest serial console ----\n" + serial.read_text(errors="replace") + "----\n")
    produced = Path(result.artifacts[0])
    if not produced.is_file():
        raise BuildError("packer", f"Packer reported {produced} but it does not exist")
    job.disk_out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(produced, job.disk_out)
    return result


def template_variables(
    appliance: Appliance,
    settings: Settings,
    work: Path,
    base_disk: Path,
    out_dir: Path,
    vm_name: str,
    seed_dir: Path,
    private_key: Path,
) -> dict[str, str]:
    """The variables the shared template (or an appliance's own) receives: the appliance's own ``variables`` first, then
    the pipeline's (README "Building an image"), which always win (``invoke validate`` also refuses a
    definition that sets one of them). The machine's (accelerator, machine_type, cpu_model, cpus,
    memory, ssh_timeout) are replaced by ``QemuMachine`` at build time."""
    return {
        **{k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in appliance.variables.items()},
        "base_image": str(base_disk),
        "output_directory": str(out_dir),
        "vm_name": vm_name,
        "accelerator": Accel.TCG.value,
        "machine_type": "pc",
        "cpu_model": TCG_CPU_MODEL,
        "ssh_timeout": "30m",
        "cpus": str(min(2, os.cpu_count() or 1)),
        "memory": str(max(GUEST_MEMORY_MB, appliance.hardware.ram_min_mb)),
        "seed_dir": str(seed_dir),
        "ssh_username": BUILD_USER,
        "ssh_private_key_file": str(private_key),
        "scripts": json.dumps([str(p) for p in appliance.provisioner_paths(settings.provisioners_dir)]),
        "disk_size": f"{appliance.hardware.disk_gb}G",
        # the pipeline made a bootstrapped or layered base at its size; an upstream image grows to it
        "skip_resize_disk": str(appliance.base.kind is not BaseKind.IMAGE).lower(),
        "package_list": str(work / "packages.tsv"),
        "serial_log": str(work / "serial.log"),
    }


def read_package_list(path: Path) -> tuple[InstalledPackage, ...]:
    """Installed packages from the guest's ``dpkg-query`` output (status, name, version, arch, source)."""
    if not path.is_file():
        raise BuildError("manifest", f"{path}: the guest's package list was not downloaded")
    packages = []
    for line in path.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) == 5 and fields[0].startswith("ii"):
            _, name, version, arch, source = fields
            packages.append(InstalledPackage(name, version, arch, source.split(" ")[0] or name))
    if not packages:
        raise BuildError("manifest", f"{path}: no installed packages listed")
    return tuple(sorted(packages, key=lambda p: (p.name, p.arch)))


def _artifact(stage: Path, name: str, role: str, fmt: str) -> Artifact:
    path = stage / name
    virtual = None
    if fmt == "qcow2":
        info = json.loads(run.run(["qemu-img", "info", "-f", "qcow2", "--output=json", str(path)]).stdout)
        virtual = int(info["virtual-size"])
    return Artifact.from_digests(name, role, fmt, hash_file(path), virtual)


# Held (flock) by a build for the whole life of its scratch and staging folders; the kernel drops it when
# the build dies, even by SIGKILL or the OOM killer, so a folder whose lock can be taken was left by a
# killed build.
_OWNER_LOCK = ".owner.lock"
_STAGING_GLOB = ".*.partial-*"


@contextlib.contextmanager
def _owned_folder(parent: Path, prefix: str) -> Iterator[Path]:
    """A new folder in ``parent`` named ``prefix`` + random, holding its owner lock until it is removed."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    # locked before it gets its name: a sweep never sees this folder's lock free while we live
    lock = os.open(folder / f"{_OWNER_LOCK}.new", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        os.rename(folder / f"{_OWNER_LOCK}.new", folder / _OWNER_LOCK)
        yield folder
    finally:
        if folder.exists():
            _remove_scratch(folder)
        os.close(lock)


@contextlib.contextmanager
def _staging(out: Path, version: str) -> Iterator[Path]:
    """A hidden folder beside the final one; removed unless ``_publish`` renamed it. What a killed
    build staged in ``out`` goes at the next build's start."""
    out.mkdir(parents=True, exist_ok=True)
    _sweep_abandoned(out, _STAGING_GLOB)
    with _owned_folder(out, f".{version}.partial-") as stage:
        yield stage


@contextlib.contextmanager
def _scratch(settings: Settings, name: str) -> Iterator[Path]:
    """Build-owned scratch space (seed, build key, Packer's TMPDIR); always deleted, key included. What a
    killed build left (which may hold a chroot's mounts) goes at the next build's start."""
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    _sweep_abandoned(settings.work_dir)
    with _owned_folder(settings.work_dir, f"build-{name}-") as work:
        yield work


def _remove_scratch(work: Path) -> None:
    still = unmount_under(work)
    if still:  # never delete through a mount: it may reach the host's own files
        log.warning("left %s in place: %s still mounted (umount it, then delete it)", work, still[0])
    else:
        shutil.rmtree(work, ignore_errors=True)


def _sweep_abandoned(parent: Path, pattern: str = "build-*") -> None:
    """Unmount and delete the folders matching ``pattern`` in ``parent`` (scratch or staging) of builds
    that were killed (their lock is free). A folder without a lock is left alone: one being created right
    now, one from before the lock existed, or a staging folder that is being renamed to its final name."""
    for folder in sorted(parent.glob(pattern)):
        try:
            fd = os.open(folder / _OWNER_LOCK, os.O_RDWR | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live build
            log.info("removing %s: left by a build that was killed", folder)
            _remove_scratch(folder)
        finally:
            os.close(fd)


def _publish(stage: Path, final: Path) -> None:
    """Make the staged version appear under its final name in one rename (replacing it with --force)."""
    (stage / _OWNER_LOCK).unlink()  # the build's own (it still holds it); not part of the version
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.replaced-{uuid.uuid4().hex[:8]}")
        final.rename(old)
    stage.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _log_to(log_file: TextIO) -> Iterator[None]:
    handler = logging.StreamHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    handler.addFilter(lambda record: not getattr(record, packer.CONSOLE_ONLY, False))
    log.addHandler(handler)
    level = log.level
    if log.getEffectiveLevel() > logging.INFO:  # the build log is complete even when the console is quiet
        log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def _file_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


@contextlib.contextmanager
def _failures_named(settings: Settings, log_path: Path, name: str, version: str) -> Iterator[None]:
    """Turn any failure into a ``BuildError`` naming its step, with the log tail, and keep the log in
    ``<work>/failed/`` (the staging folder is about to go)."""
    try:
        yield
    except PipelineError as e:
        if isinstance(e, BuildError):
            step_name, detail = e.step, e.message.removeprefix(f"build step '{e.step}' failed: ").split("\n")[0]
        else:
            step_name, detail = "build", str(e.message).splitlines()[0]
        kept = settings.work_dir / "failed" / f"{name}-{version}-{int(time.time())}.log"
        kept.parent.mkdir(parents=True, exist_ok=True)
        hint = e.hint
        with contextlib.suppress(OSError):
            shutil.copyfile(log_path, kept)
            hint = (hint + "; " if hint else "") + f"full log: {kept}"
        tail = e.log_tail if isinstance(e, BuildError) and e.log_tail.strip() else _file_tail(log_path)
        raise BuildError(step_name, detail, tail, hint) from e


def validate_appliances(settings: Settings) -> list[str]:
    """Check every definition (all problems at once), then ``packer validate`` each template.

    Returns one line per appliance; raises ``ConfigError`` listing every problem found.
    """
    appliances = load_all(settings.templates_dir, settings.provisioners_dir)
    problems: list[str] = []
    lines: list[str] = []
    with _scratch(settings, "validate") as work:
        key = generate_ssh_key(work / "key")
        seed = write_seed_dir(work / "seed", meta_data("validate", "validate"), "#cloud-config\n")
        placeholder = work / "base.qcow2"
        placeholder.touch()
        for appliance in appliances.values():
            if why := appliance.template_problem():
                problems.append(why)
                continue
            variables = template_variables(
                appliance, settings, work, placeholder, work / "out", f"{appliance.name}.qcow2", seed, key.private
            )
            found = packer.validate_template(appliance.template_path, variables, work / "tmp")
            problems += found
            if not found:
                lines.append(f"{appliance.name}: ok ({appliance.template_path.relative_to(settings.root)})")
    if problems:
        raise ConfigError(problems)
    return lines
