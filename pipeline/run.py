"""The one place that runs other programs (Packer, qemu-img, QEMU, ssh, mmdebstrap, openssl...).

argv is always a list, never a shell string; the environment is scrubbed down to what the tool
needs; stdin is closed; a failure raises ``CommandError`` with argv, exit code and the output tail.

Long-running tools run in their own session (a Ctrl-C in the terminal reaches us, not them half-way);
when we are stopped, by Ctrl-C or by SIGTERM/SIGHUP once ``stop_on_signals`` is installed (a CI job
cancelled, ``timeout``, a closed terminal), each one is stopped in turn and waited for, so mmdebstrap
unmounts its chroot and Packer its QEMU before we exit.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import re
import resource
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import CommandError, ToolNotFound
from pipeline.log import log

# Variables passed through from the caller's environment; everything else is dropped.
_PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TERM", "USER", "LOGNAME", "SOURCE_DATE_EPOCH")

# Where to find each tool and which package provides it, for the error a user sees.
TOOL_HINTS: dict[str, str] = {
    "packer": "install Debian's 'packer' package (apt-get install packer), or run scripts/setup",
    "qemu-img": "install Debian's 'qemu-utils' package",
    "qemu-system-x86_64": "install Debian's 'qemu-system-x86' package",
    "mmdebstrap": "install Debian's 'mmdebstrap' package",
    "genisoimage": "install Debian's 'genisoimage' package",
    "xorriso": "install Debian's 'xorriso' package",
    "ssh": "install Debian's 'openssh-client' package",
    "ssh-keygen": "install Debian's 'openssh-client' package",
    "openssl": "install Debian's 'openssl' package",
    "virt-v2v": "install Debian's 'virt-v2v', 'nbdkit' and 'libnbd-bin' packages",
    "losetup": "install Debian's 'mount' package",
    "sfdisk": "install Debian's 'fdisk' package",
    "mkfs.ext4": "install Debian's 'e2fsprogs' package",
    "chromium": "install Debian's 'chromium' package",
}


# How long a stopped child may take to clean up (mmdebstrap unmounting, Packer stopping QEMU) before
# its whole process group is killed.
STOP_GRACE_SECONDS = 60.0


class Stopped(KeyboardInterrupt):
    """We were sent ``signum`` (SIGTERM, SIGHUP): raised in the main thread like Ctrl-C's
    ``KeyboardInterrupt``, so every ``finally`` and context manager runs on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, frame: object) -> None:
    raise Stopped(signum)


def stop_on_signals() -> None:
    """Turn SIGTERM and SIGHUP into ``Stopped`` (Python's default for them exits at once, leaving
    children that run in their own session, their mounts and their partial files behind). A signal
    we were started ignoring stays ignored (``nohup invoke serve &`` outlives its terminal)."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _raise_stopped)


def stop_group(proc: subprocess.Popen[Any], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM ``proc``'s process group, wait up to ``grace`` s for it to clean up, then SIGKILL it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass(frozen=True)
class Limits:
    """Resource limits applied to a child process (e.g. qemu-img on untrusted input)."""

    cpu_seconds: int | None = None
    address_space_bytes: int | None = None
    # the largest file the child may write (SIGXFSZ beyond it): a tool copying files out of an image
    file_size_bytes: int | None = None

    def apply(self) -> None:  # runs in the child, before exec
        if self.file_size_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.file_size_bytes, self.file_size_bytes))
        if self.cpu_seconds is not None:
            resource.setrlimit(resource.RLIMIT_CPU, (self.cpu_seconds, self.cpu_seconds))
        if self.address_space_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (self.address_space_bytes, self.address_space_bytes))


@dataclass(frozen=True)
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def find_tool(name: str, hint: str | None = None) -> str:
    """Absolute path of ``name`` on PATH, or ``ToolNotFound`` saying how to install it."""
    path = shutil.which(name)
    if path is None:
        raise ToolNotFound(f"required tool '{name}' is not installed", hint or TOOL_HINTS.get(name))
    return path


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The scrubbed environment children get: a few passed-through variables plus ``extra``."""
    env = {k: os.environ[k] for k in _PASS_ENV if k in os.environ}
    if "TMPDIR" in env and not os.path.isdir(env["TMPDIR"]):
        # a TMPDIR that does not exist fails children in their own ways (Packer exits at once, even for
        # `packer version`); they get the folder Python itself fell back to
        env["TMPDIR"] = tempfile.gettempdir()
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.setdefault("LANG", "C.UTF-8")
    if extra:
        env.update(extra)
    return env


# prctl(2) through the C library: the one call Python's standard library lacks (no package needed for it).
_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _stop_with(parent: int) -> Callable[[], None]:
    """For a long-running child, run before exec: the kernel sends it SIGTERM when ``parent`` (we) dies,
    even by SIGKILL or the OOM killer, where none of our own clean-up runs. So Packer still stops its
    QEMU and mmdebstrap unmounts; before, they ran on, orphaned. If we died before this ran, the child
    exits at once."""

    def apply() -> None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return apply


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float | None = None,
    input_text: str | None = None,
    limits: Limits | None = None,
    hint: str | None = None,
) -> Result:
    """Run a program to completion and capture its output.

    Raises ``CommandError`` when it exits non-zero and ``check`` is true, and when it times out.
    """
    args = [os.fspath(a) for a in argv]
    log.debug("$ %s", " ".join(args))
    try:
        proc = subprocess.run(
            args,
            cwd=cwd,
            env=clean_env(env),
            stdin=subprocess.DEVNULL if input_text is None else None,
            input=input_text,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            preexec_fn=limits.apply if limits else None,
            check=False,
        )
    except FileNotFoundError as e:
        raise ToolNotFound(f"required tool '{args[0]}' is not installed", TOOL_HINTS.get(args[0])) from e
    except subprocess.TimeoutExpired as e:
        out = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise CommandError(args, -1, _tail(out) + f"\n(timed out after {timeout}s)", hint) from e
    result = Result(args, proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise CommandError(args, proc.returncode, _tail(proc.stderr or proc.stdout), hint)
    return result


def stream(
    argv: Sequence[str | os.PathLike[str]],
    on_line: Callable[[str], None],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float | None = None,
    hint: str | None = None,
) -> Result:
    """Run a program, handing each line of its combined stdout/stderr to ``on_line`` as it comes.

    Used for long-running tools whose progress the user watches (Packer, mmdebstrap).
    """
    args = [os.fspath(a) for a in argv]
    log.debug("$ %s", " ".join(args))
    tail: collections.deque[str] = collections.deque(maxlen=40)
    try:
        proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=clean_env(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
            preexec_fn=_stop_with(os.getpid()),
        )
    except FileNotFoundError as e:
        raise ToolNotFound(f"required tool '{args[0]}' is not installed", TOOL_HINTS.get(args[0])) from e
    timer: threading.Timer | None = None
    timed_out = threading.Event()
    if timeout is not None:

        def _kill() -> None:
            timed_out.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)

        timer = threading.Timer(timeout, _kill)
        timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            on_line(line)
        returncode = proc.wait()
    except BaseException:
        stop_group(proc)
        raise
    finally:
        if timer is not None:
            timer.cancel()
    text = "\n".join(tail)
    if timed_out.is_set():
        raise CommandError(args, returncode, text + f"\n(timed out after {timeout}s)", hint)
    if check and returncode != 0:
        raise CommandError(args, returncode, text, hint)
    return Result(args, returncode, text, "")


@contextlib.contextmanager
def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a long-lived process (a QEMU guest, a test server) and stop it when the block ends.

    Output goes to ``log_path`` (or is discarded). The whole process group is terminated, then killed.
    """
    args = [os.fspath(a) for a in argv]
    log.debug("$ %s &", " ".join(args))
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(log_path, "ab")) if log_path else subprocess.DEVNULL
        try:
            proc = subprocess.Popen(
                args,
                cwd=cwd,
                env=clean_env(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_stop_with(os.getpid()),
            )
        except FileNotFoundError as e:
            raise ToolNotFound(f"required tool '{args[0]}' is not installed", TOOL_HINTS.get(args[0])) from e
        try:
            yield proc
        finally:
            if proc.poll() is None:
                stop_group(proc, grace=15)


def tool_version(argv: Sequence[str]) -> str:
    """The first line with a version number (digits.digits) a tool prints for its version flag, e.g.
    ``tool_version(["packer", "version"])``, else its first line: a warning printed before the version
    is never taken for it (the version is part of every build's inputs: a warning would change them)."""
    res = run(argv, check=False)
    lines = [line.strip() for line in (res.stdout or res.stderr).splitlines() if line.strip()]
    versioned = [line for line in lines if _VERSION_NUMBER.search(line)]
    return (versioned or lines or ["unknown"])[0]


_VERSION_NUMBER = re.compile(r"\d+\.\d+")
