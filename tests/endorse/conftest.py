"""Fixtures for endorse tests: a real throwaway CA, real keys, real files in tmp_path."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.endorse.pki import DevCa, Issued, issue_endorser, make_ca, make_dev_ca
from tests.endorse.disks import security_packages


@pytest.fixture(scope="session")
def dev_ca(tmp_path_factory: pytest.TempPathFactory) -> DevCa:
    return make_dev_ca(tmp_path_factory.mktemp("dev-ca"))


@pytest.fixture(scope="session")
def other_ca() -> Issued:
    """A second CA nobody trusts."""
    return make_ca("some other CA")


@pytest.fixture(scope="session")
def dev_ca_issued(dev_ca: DevCa) -> Issued:
    return Issued((dev_ca.folder / "ca.key").read_bytes(), dev_ca.ca_cert.read_bytes())


@pytest.fixture(scope="session")
def endorser_pair(dev_ca: DevCa) -> Issued:
    return Issued(dev_ca.endorser_key.read_bytes(), dev_ca.endorser_cert.read_bytes())


@pytest.fixture(scope="session")
def second_endorser(dev_ca_issued: Issued) -> Issued:
    """Another endorser certified by the same (trusted) CA."""
    return issue_endorser(dev_ca_issued, common_name="someone else", email="else@example.org")


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "repo" / "debian-12-2026.11.22.ova"
    path.parent.mkdir()
    path.write_bytes(b"not really an OVA, but bytes with a checksum\n" * 1000)
    return path


@pytest.fixture(scope="session")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Debian security mirror on 127.0.0.1: bookworm-security is clean, stale-security has a fix pending."""
    root = tmp_path_factory.mktemp("mirror")
    suites = {
        # older or equal versions of what is installed, and a package the image does not have
        "bookworm-security": {
            "openssl": "3.0.15-1~deb12u1",
            "base-files": "12.4+deb12u5",
            "bind9": "1:9.18.33-1~deb12u2",
        },
        "stale-security": {"openssl": "3.0.17-1~deb12u2", "cloud-init": "22.4.2-1+deb12u3"},
    }
    for suite, versions in suites.items():
        folder = root / "dists" / suite / "main" / "binary-amd64"
        folder.mkdir(parents=True)
        (folder / "Packages.xz").write_bytes(security_packages(versions))
    with serve_folder(root) as url:
        yield url


@contextlib.contextmanager
def serve_folder(root: Path) -> Iterator[str]:
    """Serve ``root`` over HTTP on 127.0.0.1 (a mirror, a repository, a catalogue's list URL)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
