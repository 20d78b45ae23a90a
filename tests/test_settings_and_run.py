"""Settings loading and the subprocess wrapper, on real processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import CommandError, ConfigError, ToolNotFound
from pipeline.fsutil import atomic_write, hash_file
from pipeline.run import find_tool, run, stream, tool_version
from pipeline.settings import load_settings

BASE = {
    "output_dir": "output",
    "work_dir": "work",
    "cache_dir": ".cache",
    "repository": "file://./repository",
    "repository_public_url": "http://127.0.0.1:8080/repo",
    "catalogue": "sqlite:///./catalogue.db",
    "catalogue_public_url": "http://127.0.0.1:8080",
    "accel": "auto",
}


def test_settings_resolve_relative_paths_and_env_overrides(tmp_path: Path) -> None:
    s = load_settings(BASE, tmp_path, environ={"VMI_ACCEL": "tcg"})
    assert s.output_dir == tmp_path / "output"
    assert s.repository == f"file://{tmp_path.resolve()}/repository"
    assert s.catalogue == f"sqlite:///{tmp_path.resolve()}/catalogue.db"
    assert s.accel == "tcg"
    assert s.version_dir("debian-12", "2026.01.01") == tmp_path / "output/debian-12/2026.01.01"


def test_empty_environment_variable_counts_as_unset(tmp_path: Path) -> None:
    s = load_settings(BASE, tmp_path, environ={"VMI_REPOSITORY": "", "VMI_ACCEL": ""})
    assert s.repository == f"file://{tmp_path.resolve()}/repository"
    assert s.accel == "auto"


def test_settings_reject_unknown_and_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"vmi.colour: is not a known setting"):
        load_settings(BASE | {"colour": "red"}, tmp_path, environ={})
    with pytest.raises(ConfigError, match=r"vmi.accel"):
        load_settings(BASE | {"accel": "hvf"}, tmp_path, environ={})


def test_project_invoke_yaml_loads(project_root: Path) -> None:
    import yaml

    cfg = yaml.safe_load((project_root / "invoke.yaml").read_text())["vmi"]
    s = load_settings(cfg, project_root, environ={})
    assert s.templates_dir == project_root / "packer_templates"


def test_a_missing_tmpdir_never_reaches_children_or_tool_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Packer exits at once when $TMPDIR does not exist, even for `packer version`: its error line then
    # became the build's recorded Packer version, changed the build's inputs and forced a rebuild
    monkeypatch.setenv("TMPDIR", str(tmp_path / "gone"))
    seen = run(["sh", "-c", 'echo "$TMPDIR"; test -d "$TMPDIR"'])
    assert Path(seen.stdout.strip()).is_dir(), seen.stdout
    assert tool_version([find_tool("packer"), "version"]).startswith("Packer v"), "packer version failed"


def test_tool_version_is_the_first_line_with_a_version_number(tmp_path: Path) -> None:
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\necho 'warning: no config file in /etc/tool-7'\necho 'tool 2.14.1 (build 3)'\n")
    tool.chmod(0o755)
    assert tool_version([str(tool)]) == "tool 2.14.1 (build 3)"
    quiet = tmp_path / "quiet"
    quiet.write_text("#!/bin/sh\necho 'no version here' >&2\nexit 1\n")
    quiet.chmod(0o755)
    assert tool_version([str(quiet)]) == "no version here"  # else the first line, as before
    silent = tmp_path / "silent"
    silent.write_text("#!/bin/sh\nexit 0\n")
    silent.chmod(0o755)
    assert tool_version([str(silent)]) == "unknown"


def test_run_reports_argv_exit_code_and_tail() -> None:
    with pytest.raises(CommandError) as err:
        run(["sh", "-c", "echo first >&2; echo boom >&2; exit 3"])
    assert err.value.returncode == 3
    assert err.value.argv[0] == "sh"
    assert "boom" in err.value.output_tail and "exit code 3" in str(err.value)


def test_run_scrubs_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "leak")
    out = run(["env"]).stdout
    assert "AWS_SECRET_ACCESS_KEY" not in out
    assert "FOO=bar" in run(["env"], env={"FOO": "bar"}).stdout


def test_missing_tool_has_hint() -> None:
    with pytest.raises(ToolNotFound) as err:
        find_tool("definitely-not-a-tool-xyz", hint="install it")
    assert err.value.hint == "install it"
    with pytest.raises(ToolNotFound):
        run(["definitely-not-a-tool-xyz"])


def test_stream_delivers_lines_and_times_out() -> None:
    seen: list[str] = []
    stream(["sh", "-c", "echo one; echo two"], seen.append)
    assert seen == ["one", "two"]
    with pytest.raises(CommandError, match="timed out"):
        stream(["sleep", "5"], seen.append, timeout=0.5)


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    final = tmp_path / "x.bin"
    with pytest.raises(RuntimeError), atomic_write(final) as f:
        f.write(b"partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic_write(final) as f:
        f.write(b"abc")
    d = hash_file(final)
    assert d.size == 3
    assert d.sha256 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# a fresh interpreter (signal handlers are process-wide): install stop_on_signals, then signal itself
_SIGNAL_CHILD = """
import os, signal, sys
from pipeline.run import Stopped, stop_on_signals
if sys.argv[1] == "ignored":
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
stop_on_signals()
try:
    os.kill(os.getpid(), getattr(signal, sys.argv[2]))
    print("still running")
except Stopped as e:
    print("stopped", signal.Signals(e.signum).name)
"""


@pytest.mark.parametrize(
    ("start", "sent", "printed"),
    [
        ("default", "SIGTERM", "stopped SIGTERM"),
        ("default", "SIGHUP", "stopped SIGHUP"),
        ("ignored", "SIGHUP", "still running"),
        ("ignored", "SIGTERM", "stopped SIGTERM"),
    ],
)
def test_stop_on_signals_raises_stopped_but_keeps_an_inherited_ignore(
    project_root: Path, start: str, sent: str, printed: str
) -> None:
    child = subprocess.run(
        [sys.executable, "-c", _SIGNAL_CHILD, start, sent],
        cwd=project_root, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (child.returncode, child.stdout.strip()) == (0, printed), child.stderr
