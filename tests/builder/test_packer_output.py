"""Packer's -machine-readable output, parsed from lines a real `packer build` / `packer validate`
of debian-12 printed on this machine (tests/builder/data/)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pipeline.builder.packer import PackerRun, packer_build, parse_line, parse_output, unescape
from pipeline.errors import BuildError

DATA = Path(__file__).parent / "data"


def _lines(name: str) -> list[str]:
    return (DATA / name).read_text().splitlines()


def test_escapes_are_undone() -> None:
    parsed = parse_line(
        "1795307429,,ui,message,    qemu.appliance: Media current: stdio file%!(PACKER_COMMA) overwriteable"
    )
    assert parsed is not None
    assert parsed.timestamp == 1795307429 and parsed.target == "" and parsed.type == "ui"
    assert parsed.data == ("message", "    qemu.appliance: Media current: stdio file, overwriteable")
    assert unescape("a\\nb%!(PACKER_COMMA)c\\r") == "a\nb,c\r"


def test_non_machine_lines_are_ignored() -> None:
    assert parse_line("some plugin printed this") is None
    assert parse_line("") is None


def test_real_build_output_gives_artifact_phases_and_no_false_errors() -> None:
    run = parse_output(_lines("packer-build.machine-readable.txt"))
    assert run.artifacts == [run.artifacts[0]] and run.artifacts[0].endswith(".qcow2")
    # remote stderr (apt, update-grub) arrives as ui,error lines; none of them is an error
    assert run.errors == []
    assert list(run.phase_starts) == ["boot", "provision", "shutdown", "compact"]
    durations = run.phase_durations()
    assert durations["boot"] > 0 and durations["provision"] > 0
    assert run.first_ts is not None and run.last_ts is not None
    assert sum(durations.values()) <= run.last_ts - run.first_ts


def test_real_validate_failure_lists_each_problem() -> None:
    run = parse_output(_lines("validate-unset.machine-readable.txt"))
    assert len(run.errors) == 1 and run.artifacts == []
    assert run.errors[0].count('Unset variable "') == 7
    assert 'Unset variable "vm_name"' in run.errors[0]


def _fake_packer(tmp_path: Path, script: str) -> Path:
    """A stand-in `packer` on PATH replaying real output: the process boundary, not our code, is faked."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "packer"
    exe.write_text(f"#!{sys.executable}\n{script}")
    exe.chmod(0o755)
    return bindir


def _build_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> PackerRun:
    monkeypatch.setenv("PATH", f"{_fake_packer(tmp_path, script)}:/usr/bin:/bin")
    template = tmp_path / "t.pkr.hcl"
    template.write_text("")
    with open(tmp_path / "build.log", "w") as log_file:
        return packer_build(template, {"a": "b"}, tmp_path / "tmp", log_file, timeout=60)


def test_success_needs_exit_zero_and_an_artifact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    replay = f"import sys\nsys.stdout.write(open({str(DATA / 'packer-build.machine-readable.txt')!r}).read())\n"
    run = _build_with(tmp_path, monkeypatch, replay)
    assert run.artifacts
    assert "Connected to SSH!" in (tmp_path / "build.log").read_text()


def test_exit_zero_without_artifact_is_a_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = "print('1795307429,,ui,say,==> qemu.appliance: Starting VM%!(PACKER_COMMA) booting disk image')\n"
    with pytest.raises(BuildError, match="reported no artifact") as err:
        _build_with(tmp_path, monkeypatch, script)
    assert err.value.step == "packer" and "Starting VM, booting disk image" in err.value.log_tail


def test_failure_names_packers_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = (
        "import sys\n"
        "print('1795307500,,ui,say,==> qemu.appliance: Provisioning with shell script: seal.sh')\n"
        "print('1795307501,,ui,error,Build %!(PACKER_COMMA)qemu.appliance%!(PACKER_COMMA) errored: "
        "Script exited with non-zero exit status: 1')\n"
        "print('1795307501,,error-count,1')\n"
        "print('1795307501,,ui,error,\\\\n==> Some builds didn\\'t complete successfully and had errors:')\n"
        "sys.exit(1)\n"
    )
    with pytest.raises(BuildError) as err:
        _build_with(tmp_path, monkeypatch, script)
    assert "exit code 1" in str(err.value) or "errored" in str(err.value)
    assert "Provisioning with shell script: seal.sh" in err.value.log_tail


def test_packer_tmpdir_stays_short_enough_for_plugin_sockets(tmp_path: Path) -> None:
    from pipeline.builder.packer import packer_tmpdir

    deep = tmp_path / ("x" * 80) / "tmp"
    with packer_tmpdir(deep) as tmp:
        assert len(str(tmp)) < 60 and tmp.is_dir() and not deep.exists()
    assert not tmp.exists()  # the fallback folder is removed with the build
    short = Path("/tmp") / "vmi-t"
    try:
        with packer_tmpdir(short) as tmp:
            assert tmp == short and tmp.is_dir()
    finally:
        short.rmdir()
