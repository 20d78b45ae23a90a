"""Our own wrapper around ``packer build -machine-readable``: parse its CSV lines, stream progress,
keep the full log, and judge success by the exit code plus the artifact lines.

Packer's remote stderr arrives as ``ui,error`` lines even when nothing failed, so those lines alone
never decide anything (build-feasibility.md pitfall 19).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from pipeline import run
from pipeline.errors import BuildError, CommandError
from pipeline.log import log

COMMA = "%!(PACKER_COMMA)"
CONSOLE_ONLY = "vmi_console_only"  # log-record flag: shown on the terminal, not repeated in build.log

# Packer's ui "say" lines that start the phases we time (English text of packer 1.6 builder/qemu).
_PHASES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("boot", re.compile(r"Starting VM, booting disk image|Starting VM")),
    ("provision", re.compile(r"Connected to SSH!")),
    ("shutdown", re.compile(r"Gracefully halting virtual machine")),
    ("compact", re.compile(r"Converting hard drive")),
)


@dataclass(frozen=True)
class MachineLine:
    """One ``-machine-readable`` line: ``<unix time>,<target>,<type>,<data...>`` with data unescaped."""

    timestamp: int
    target: str
    type: str
    data: tuple[str, ...]


def unescape(field_text: str) -> str:
    """Undo Packer's escaping inside a data field: commas, newlines and carriage returns."""
    return field_text.replace(COMMA, ",").replace("\\n", "\n").replace("\\r", "\r")


def parse_line(line: str) -> MachineLine | None:
    """Parse one line; ``None`` for anything that is not machine-readable (e.g. a plugin's stray print)."""
    parts = line.rstrip("\r\n").split(",")
    if len(parts) < 3 or not parts[0].isdigit():
        return None
    return MachineLine(int(parts[0]), parts[1], parts[2], tuple(unescape(p) for p in parts[3:]))


@dataclass
class PackerRun:
    """What one Packer run told us: artifact files, errors, and when each phase began."""

    artifacts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    ui_lines: list[str] = field(default_factory=list)
    phase_starts: dict[str, int] = field(default_factory=dict)
    first_ts: int | None = None
    last_ts: int | None = None

    def feed(self, parsed: MachineLine) -> str | None:
        """Record a parsed line; return the human text to show for it, if any."""
        self.first_ts = parsed.timestamp if self.first_ts is None else self.first_ts
        self.last_ts = parsed.timestamp
        if parsed.type == "artifact" and len(parsed.data) >= 4 and parsed.data[1] == "file":
            self.artifacts.append(parsed.data[3])
        elif parsed.type == "error" and parsed.data:
            self.errors.append(parsed.data[0])
        elif parsed.type == "ui" and len(parsed.data) >= 2:
            kind, text = parsed.data[0], parsed.data[1]
            for name, pattern in _PHASES:
                if name not in self.phase_starts and pattern.search(text):
                    self.phase_starts[name] = parsed.timestamp
            if kind == "error" and text.startswith("Error: "):
                self.errors.append(text)
            self.ui_lines.append(text)
            return text.rstrip("\n")
        return None

    def phase_durations(self) -> dict[str, float]:
        """Seconds spent in each phase, from its start to the next phase's start (or the end)."""
        starts = sorted(self.phase_starts.items(), key=lambda kv: kv[1])
        end = self.last_ts if self.last_ts is not None else 0
        out: dict[str, float] = {}
        for i, (name, ts) in enumerate(starts):
            nxt = starts[i + 1][1] if i + 1 < len(starts) else end
            out[name] = float(max(0, nxt - ts))
        return out


def parse_output(lines: list[str]) -> PackerRun:
    """Parse a whole captured ``-machine-readable`` output."""
    result = PackerRun()
    for line in lines:
        parsed = parse_line(line)
        if parsed is not None:
            result.feed(parsed)
    return result


def _var_args(variables: Mapping[str, str]) -> list[str]:
    args: list[str] = []
    for key, value in sorted(variables.items()):
        args += ["-var", f"{key}={value}"]
    return args


# Packer's plugins listen on unix sockets in TMPDIR; a socket path over 107 bytes fails to bind, and
# `packer validate` then exits 0 anyway. Deep work folders (pytest's tmp_path) need a short one.
_MAX_TMPDIR = 60


@contextlib.contextmanager
def packer_tmpdir(preferred: Path) -> Iterator[Path]:
    """A TMPDIR the build owns: ``preferred`` if its path is short enough, else a fresh folder in /tmp."""
    if len(str(preferred)) <= _MAX_TMPDIR:
        preferred.mkdir(parents=True, exist_ok=True)
        yield preferred
        return
    parent = tempfile.gettempdir() if len(tempfile.gettempdir()) < _MAX_TMPDIR - 25 else "/tmp"
    short = Path(tempfile.mkdtemp(prefix="vmi-packer-", dir=parent))
    try:
        yield short
    finally:
        shutil.rmtree(short, ignore_errors=True)


def packer_env(tmp_dir: Path) -> dict[str, str]:
    """Environment for Packer: no phone-home, temp files and caches in a folder the build owns."""
    return {
        "CHECKPOINT_DISABLE": "1",
        "TMPDIR": str(tmp_dir),
        "PACKER_CACHE_DIR": str(tmp_dir / "packer_cache"),
        "PACKER_CONFIG_DIR": str(tmp_dir / "packer_config"),
        "PACKER_NO_COLOR": "1",
    }


def validate_template(template: Path, variables: Mapping[str, str], tmp_dir: Path) -> list[str]:
    """``packer validate`` the template; each problem as a line naming the template."""
    argv = [run.find_tool("packer"), "validate", "-machine-readable", *_var_args(variables), str(template)]
    with packer_tmpdir(tmp_dir) as tmp:
        res = run.run(argv, cwd=template.parent, env=packer_env(tmp), check=False, timeout=300)
    parsed = parse_output((res.stdout + "\n" + res.stderr).splitlines())
    if res.returncode == 0 and not parsed.errors:
        return []
    texts = parsed.errors or [ln for ln in parsed.ui_lines if ln.strip()] or [res.stderr.strip() or "failed"]
    return [f"{template}: packer validate: {t.strip()}" for t in texts]


def packer_build(
    template: Path,
    variables: Mapping[str, str],
    tmp_dir: Path,
    log_file: TextIO,
    *,
    timeout: float = 5400,
    on_progress: Callable[[str], None] | None = None,
) -> PackerRun:
    """Run ``packer build`` on ``template``; every raw line goes to ``log_file``, progress to the log.

    Success means exit code 0 *and* at least one artifact file reported; otherwise ``BuildError``
    with the tail of what Packer said.
    """
    argv = [run.find_tool("packer"), "build", "-machine-readable", *_var_args(variables), str(template)]
    state = PackerRun()
    start = time.monotonic()
    # progress goes to the console only: the raw line is in the log already
    show = on_progress or (
        lambda text: log.info("    [%4.0fs] %s", time.monotonic() - start, text, extra={CONSOLE_ONLY: True})
    )

    def on_line(line: str) -> None:
        log_file.write(line + "\n")
        log_file.flush()
        parsed = parse_line(line)
        if parsed is None:
            if line.strip():
                show(line)
            return
        text = state.feed(parsed)
        if text is not None:
            for part in text.splitlines():
                if part.strip():
                    show(part)

    try:
        with packer_tmpdir(tmp_dir) as tmp:
            res = run.stream(argv, on_line, cwd=template.parent, env=packer_env(tmp), check=False, timeout=timeout)
    except CommandError as e:  # only a timeout raises here (check=False)
        raise BuildError("packer", f"Packer did not finish within {timeout:.0f}s", _tail(state)) from e
    if res.returncode != 0 or not state.artifacts:
        reason = state.errors[-1].strip() if state.errors else f"packer exited with code {res.returncode}"
        if res.returncode == 0:
            reason = "Packer exited 0 but reported no artifact"
        raise BuildError("packer", reason.splitlines()[0], _tail(state))
    return state


def _tail(state: PackerRun, lines: int = 30) -> str:
    text = "\n".join(state.ui_lines)
    return "\n".join(text.splitlines()[-lines:])
