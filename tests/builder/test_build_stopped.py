"""A build stopped the way CI and schedulers stop it (SIGTERM to `invoke build`: a cancelled job, `timeout`,
`systemctl stop`) leaves nothing behind: mmdebstrap and Packer run in their own session, so before
``run.stop_on_signals`` they were orphaned and ran on, with the chroot's /proc, /sys and /dev mounted
and a ``.part`` tarball growing in the cache. Real builds through the real `invoke` executable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.builder.accel import TCG_CPU_MODEL
from pipeline.manifest import BuildManifest

pytestmark = [pytest.mark.slow]

INVOKE = Path(sys.executable).parent / "invoke"
ROOT = Path(__file__).resolve().parents[2]
STAGE_DEADLINE_S = 600  # the bootstrap downloads trixie first
STOP_DEADLINE_S = 120  # run.STOP_GRACE_SECONDS plus our own cleanup


def processes_naming(path: Path) -> list[str]:
    """Command lines of live processes that mention ``path`` (zombies have none and are skipped)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in argv:
            found.append(f"{proc.name}: {argv[:200]}")
    return found


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``."""
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p == str(path) or p.startswith(f"{path}/")]


def start_build(tmp_path: Path, cache: Path, *extra: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "VMI_OUTPUT_DIR": str(tmp_path / "out"),
        "VMI_WORK_DIR": str(tmp_path / "work"),
        "VMI_CACHE_DIR": str(cache),
    }
    argv = [str(INVOKE), "build", "--appliance", "debian-13", *extra]
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(what: str, ready: Callable[[], object], build: subprocess.Popen[str]) -> None:
    started = time.monotonic()
    while not ready():
        if build.poll() is not None:
            out, err = build.communicate()
            pytest.fail(f"the build ended (exit {build.returncode}) before {what}:\n{out[-2000:]}\n{err[-2000:]}")
        assert time.monotonic() - started < STAGE_DEADLINE_S, f"no {what} after {STAGE_DEADLINE_S}s"
        time.sleep(0.5)


def stop(build: subprocess.Popen[str]) -> tuple[str, str]:
    build.send_signal(signal.SIGTERM)
    out, err = build.communicate(timeout=STOP_DEADLINE_S)
    return out, err


def qemu_argv(path: Path) -> list[str]:
    """The full command line of the QEMU process whose arguments mention ``path``."""
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")[:-1] if proc.name.isdigit() else []
        except OSError:
            continue
        if argv and Path(argv[0].decode()).name.startswith("qemu-system") and str(path).encode() in b" ".join(argv):
            return [a.decode() for a in argv]
    pytest.fail(f"no QEMU process naming {path}")


def assert_packer_ran_the_probed_machine(argv: list[str]) -> None:
    """Packer's QEMU line holds QemuMachine.machine_args() (Packer's own -machine replaced): one -machine,
    and under TCG the translation cache size and the memfd RAM backend of -m's size."""
    options = {}
    for flag in ("-machine", "-m", "-cpu"):
        assert argv.count(flag) == 1, (flag, argv)
        options[flag] = argv[argv.index(flag) + 1]
    if options["-machine"].endswith(",accel=kvm"):  # the probe chose KVM: QEMU's defaults
        assert "-accel" not in argv and "-object" not in argv, argv
        return
    assert "accel=" not in options["-machine"] and "memory-backend=vmi-ram" in options["-machine"].split(","), argv
    assert argv[argv.index("-accel") + 1] == "tcg,tb-size=256", argv
    size = options["-m"] if options["-m"].endswith("M") else f"{options['-m']}M"
    assert argv[argv.index("-object") + 1] == f"memory-backend-memfd,id=vmi-ram,size={size}", argv
    assert options["-cpu"] == TCG_CPU_MODEL, argv


def partial_files(cache: Path) -> set[Path]:
    return set(cache.rglob("*.part*"))


def assert_nothing_left(
    tmp_path: Path, cache: Path, build: subprocess.Popen[str], err: str, parts_before: set[Path]
) -> None:
    assert build.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1] == "stopped by SIGTERM", err
    assert processes_naming(tmp_path) == []
    assert mounts_under(tmp_path) == []
    assert partial_files(cache) - parts_before == set()
    assert not list((tmp_path / "out").glob("debian-13/*")), "a version folder of a stopped build"
    assert not list((tmp_path / "work").glob("build-*")), "the stopped build's work folder"


def test_stopped_during_the_bootstrap_mmdebstrap_unmounts_and_no_partial_tarball_stays(tmp_path: Path) -> None:
    cache = tmp_path / "cache"  # empty: the build bootstraps trixie with mmdebstrap
    build = start_build(tmp_path, cache)
    wait_until("mount of the mmdebstrap chroot", lambda: mounts_under(tmp_path / "work"), build)
    assert any("mmdebstrap" in p for p in processes_naming(tmp_path))
    assert partial_files(cache), "mmdebstrap writes the tarball to a .part name"
    _, err = stop(build)
    assert_nothing_left(tmp_path, cache, build, err, parts_before=set())


@pytest.mark.build
def test_stopped_while_packer_runs_the_guest_no_packer_or_qemu_stays(
    reference_build_13: tuple[Path, BuildManifest], tmp_path: Path
) -> None:
    # the reference build's cache holds the base: the forced build goes straight to Packer
    cache = ROOT / ".cache" / "vmi"
    parts_before = partial_files(cache)
    build = start_build(tmp_path, cache, "--force")
    wait_until("QEMU guest", lambda: any("qemu-system" in p for p in processes_naming(tmp_path)), build)
    assert any(Path(p.split()[1]).name == "packer" for p in processes_naming(tmp_path))
    assert_packer_ran_the_probed_machine(qemu_argv(tmp_path))
    _, err = stop(build)
    assert_nothing_left(tmp_path, cache, build, err, parts_before)
