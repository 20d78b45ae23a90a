"""A throwaway PostgreSQL server from Debian's binaries (tests and bench/catalogue_bench.py).

``initdb`` refuses to run as root, so as root the server runs as the ``postgres`` system user (via
``runuser``); as any other user it runs as that user. Loopback TCP only, trust auth, no fsync.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _pg_bin() -> Path:
    """$VMI_PG_BIN, else the newest Debian/Ubuntu PostgreSQL install (15 on Debian 12)."""
    if os.environ.get("VMI_PG_BIN"):
        return Path(os.environ["VMI_PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _pg_bin()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _traversable(path: Path) -> bool:
    """Whether another user can reach ``path`` (every folder on the way is world-searchable)."""
    return all(p.stat().st_mode & 0o001 for p in (path.resolve(), *path.resolve().parents))


@contextlib.contextmanager
def postgres_server() -> Iterator[tuple[str, int]]:
    """Start a server; yields (host, port); the superuser is ``postgres``, without a password."""
    if not (PG_BIN / "initdb").exists():
        raise RuntimeError(f"{PG_BIN}/initdb is missing: install Debian's postgresql (scripts/setup does)")
    parent = Path(tempfile.gettempdir())
    if os.geteuid() == 0 and not _traversable(parent):
        parent = Path("/var/tmp")  # e.g. a checkout under /root: the postgres user could not reach it
    base = Path(tempfile.mkdtemp(prefix="vmi-pg-", dir=parent))
    data = base / "data"
    data.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        for p in (base, data):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        base.chmod(0o755)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    initdb = [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
    subprocess.run([*prefix, *initdb], check=True, capture_output=True)
    options = f"-h 127.0.0.1 -p {port} -k {data} -c fsync=off -c full_page_writes=off -c max_connections=200"
    pg_ctl = [*prefix, str(PG_BIN / "pg_ctl"), "-D", str(data)]
    subprocess.run(
        [*pg_ctl, "-l", str(data / "server.log"), "-o", options, "-w", "start"], check=True, capture_output=True
    )
    try:
        yield "127.0.0.1", port
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "-w", "stop"], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
