"""How the boot harness waits for SSH: the real ``ssh`` client against listeners on loopback that behave
as QEMU's user network does before and after the guest's network is up."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .guest import EARLY_BANNER_WAIT_S, SSH_BANNER_WAIT_S, Guest, free_port, guest_answered


def effective(argv: list[str], option: str) -> str:
    """The value ``ssh`` would use for ``option`` with ``argv`` (``ssh -G`` prints its resolved settings)."""
    shown = subprocess.run(["ssh", "-G", *argv[1:]], capture_output=True, text=True, check=True, timeout=30)
    values = [line.split(None, 1)[1] for line in shown.stdout.splitlines() if line.split(None, 1)[0] == option]
    assert len(values) == 1, shown.stdout
    return values[0]


def test_an_attempts_own_options_override_the_defaults(tmp_path: Path) -> None:
    guest = Guest(port=2222, key=tmp_path / "id", serial_log=tmp_path / "serial.log")
    assert effective(guest.ssh_argv("debian", "true"), "connecttimeout") == str(SSH_BANNER_WAIT_S)
    argv = guest.ssh_argv("debian", "true", "-o", f"ConnectTimeout={EARLY_BANNER_WAIT_S}")
    assert effective(argv, "connecttimeout") == str(EARLY_BANNER_WAIT_S)
    assert EARLY_BANNER_WAIT_S < SSH_BANNER_WAIT_S


@contextmanager
def listener(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """A loopback port whose every accepted connection is passed to ``handle``."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)
            handle(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        server.close()
        for conn in held:
            conn.close()


def reset(conn: socket.socket) -> None:  # the guest is up, sshd is not listening: slirp drops the connection
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    conn.close()


def hold(conn: socket.socket) -> None:  # slirp's SYN to the guest was lost: nothing comes back
    pass


def close(conn: socket.socket) -> None:  # the same, when slirp closes its side in order
    conn.close()


def banner_then_close(conn: socket.socket) -> None:  # sshd answers, then the connection ends before a login
    conn.sendall(b"SSH-2.0-OpenSSH_10.0 harness-test\r\n")
    conn.close()


def make_key(tmp_path: Path) -> Path:
    key = tmp_path / "id"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30)
    return key


def attempt(tmp_path: Path, port: int) -> str:
    guest = Guest(port=port, key=make_key(tmp_path), serial_log=tmp_path / "serial.log")
    done = guest.attempt("debian", 2)
    assert done.returncode == 255, done
    return done.stderr


@pytest.mark.parametrize(
    ("handle", "answered"),
    [(reset, True), (close, True), (banner_then_close, True), (hold, False)],
    ids=["guest-reset", "guest-closed", "sshd-answered", "syn-lost"],
)
def test_an_attempt_tells_whether_the_guest_answered(
    tmp_path: Path, handle: Callable[[socket.socket], None], answered: bool
) -> None:
    with listener(handle) as port:
        stderr = attempt(tmp_path, port)
    assert guest_answered(stderr) is answered, stderr


def test_nothing_listening_yet_is_not_the_guest_answering(tmp_path: Path) -> None:
    stderr = attempt(tmp_path, free_port())
    assert "refused" in stderr
    assert not guest_answered(stderr)
    assert not guest_answered("")


def waiting(tmp_path: Path, handle: Callable[[socket.socket, int], None], deadline_s: float) -> int:
    """How many connections ``wait_for_ssh`` made to a guest that ``handle``s each and never lets it in."""
    count = 0

    def counted(conn: socket.socket) -> None:
        nonlocal count
        count += 1
        handle(conn, count)

    with listener(counted) as port:
        key = make_key(tmp_path)
        guest = Guest(port=port, key=key, serial_log=tmp_path / "serial.log", started=time.monotonic())
        with pytest.raises(AssertionError, match="no SSH login as debian"):
            guest.wait_for_ssh("debian", deadline_s=deadline_s)
    return count


def test_before_the_guest_answers_an_attempt_gives_up_early(tmp_path: Path) -> None:
    # slirp loses every SYN: with the full banner wait there would be one attempt in 8 s
    assert waiting(tmp_path, lambda conn, n: hold(conn), deadline_s=8) >= 2


def test_once_the_guest_has_answered_an_attempt_waits_the_full_banner_time(tmp_path: Path) -> None:
    # the guest's network is up (first connection reset); then sshd is slow to send its banner: the
    # second attempt must wait for it (SSH_BANNER_WAIT_S), not give up after EARLY_BANNER_WAIT_S
    def reset_then_hold(conn: socket.socket, n: int) -> None:
        (reset if n == 1 else hold)(conn)

    assert waiting(tmp_path, reset_then_hold, deadline_s=8) == 2
