"""Package index comparison on real Debian indexes: a recorded slice over loopback HTTP, and the live mirror."""

from __future__ import annotations

import lzma
import os
import time
from pathlib import Path

import pytest
import requests

from pipeline.manifest import InstalledPackage
from pipeline.rebuild.archive import ArchiveError, ArchiveIndex, parse_packages_xz, parse_source

from .conftest import DATA, Mirror

SECURITY_INDEX = DATA / "mirror/debian-security/dists/bookworm-security/main/binary-amd64/Packages.xz"

# Versions as a bookworm system installed from the point release would have them.
INSTALLED = [
    InstalledPackage("openssl", "3.0.20-1~deb12u2", "amd64"),  # security: 3.0.22-1~deb12u2
    InstalledPackage("libssl3", "3.0.20-1~deb12u2", "amd64"),  # security: 3.0.22-1~deb12u2
    InstalledPackage("openssh-client", "1:9.2p1-2+deb12u10", "amd64"),  # security has only the older u9
    InstalledPackage("tzdata", "2026b-0+deb12u1", "all"),  # security: 2026f-0+deb12u1, updates: older 2025b
    InstalledPackage("curl", "7.88.1-10+deb12u14", "amd64"),  # point release: u15 (no security fix)
    InstalledPackage("bash", "5.2.15-2+b8", "amd64"),  # binNMU in the point release: +b13
    InstalledPackage("libc6", "2.36-9+deb12u14", "amd64"),  # current everywhere
    InstalledPackage("coreutils", "9.1-1", "amd64"),  # current
    InstalledPackage("libc6", "2.36-9+deb12u1", "i386"),  # a foreign architecture: not compared
    InstalledPackage("vmi-local-tool", "1.0", "amd64"),  # in no index: not compared
]


def test_parse_source_lines() -> None:
    s = parse_source("deb [signed-by=/usr/share/keyrings/debian.gpg] http://x/debian bookworm main contrib")
    assert s is not None and (s.uri, s.suite, s.components) == ("http://x/debian", "bookworm", ("main", "contrib"))
    assert not s.security
    sec = parse_source("deb http://deb.debian.org/debian-security bookworm-security main")
    assert sec is not None and sec.security
    assert sec.index_urls("amd64") == [
        "http://deb.debian.org/debian-security/dists/bookworm-security/main/binary-amd64/Packages.xz"
    ]
    ubuntu = parse_source("deb http://security.ubuntu.com/ubuntu noble-security main universe")
    assert ubuntu is not None and ubuntu.security
    assert parse_source("deb-src http://x/debian bookworm main") is None
    assert parse_source("baseurl=https://repo.almalinux.org/almalinux/9/BaseOS") is None


def test_recorded_index_parses_to_newest_versions() -> None:
    versions = parse_packages_xz(SECURITY_INDEX.read_bytes(), str(SECURITY_INDEX))
    assert versions["openssl"] == "3.0.22-1~deb12u2"
    assert versions["openssh-client"] == "1:9.2p1-2+deb12u9"
    # linux-doc appears four times (6.1.187-1 ... 6.1.192-2): the newest wins, not the first
    assert versions["linux-doc"] == "6.1.192-2"
    with pytest.raises(ArchiveError, match=r"bad.xz: not a usable xz-compressed package index \(not xz-compressed: "):
        parse_packages_xz(b"Package: x\n", "bad.xz")


def test_updates_against_recorded_indexes_security_first(tmp_path: Path, mirror: Mirror) -> None:
    archive = ArchiveIndex(tmp_path / "cache")
    updates = archive.updates(INSTALLED, mirror.sources(), "x86_64")
    found = {(u.name, u.installed, u.available, u.suite, u.security) for u in updates}
    assert found == {
        ("libssl3", "3.0.20-1~deb12u2", "3.0.22-1~deb12u2", "bookworm-security", True),
        ("openssl", "3.0.20-1~deb12u2", "3.0.22-1~deb12u2", "bookworm-security", True),
        ("tzdata", "2026b-0+deb12u1", "2026f-0+deb12u1", "bookworm-security", True),
        ("bash", "5.2.15-2+b8", "5.2.15-2+b13", "bookworm", False),
        ("curl", "7.88.1-10+deb12u14", "7.88.1-10+deb12u15", "bookworm", False),
    }
    # security updates come first, each group by name
    assert [u.name for u in updates] == ["libssl3", "openssl", "tzdata", "bash", "curl"]


def test_nothing_to_update_when_installed_is_newest(tmp_path: Path, mirror: Mirror) -> None:
    current = [
        InstalledPackage("openssl", "3.0.22-1~deb12u2", "amd64"),
        InstalledPackage("openssh-client", "1:9.2p1-2+deb12u10", "amd64"),
        InstalledPackage("linux-image-cloud-amd64", "6.1.192-2", "amd64"),
    ]
    assert ArchiveIndex(tmp_path / "cache").updates(current, mirror.sources(), "x86_64") == []


def _index_requests(mirror: Mirror) -> list[tuple[str, dict[str, str], int]]:
    return [r for r in mirror.requests if r[0].endswith("Packages.xz")]


def test_cache_fresh_then_conditional_then_changed(tmp_path: Path, mirror: Mirror) -> None:
    cache = tmp_path / "cache"
    pkgs = [InstalledPackage("openssl", "3.0.20-1~deb12u2", "amd64")]
    ArchiveIndex(cache).updates(pkgs, mirror.sources(), "x86_64")
    assert len(_index_requests(mirror)) == 3 and all(r[2] == 200 for r in _index_requests(mirror))

    # a second run within the freshness window asks the mirror nothing
    mirror.requests.clear()
    assert ArchiveIndex(cache).updates(pkgs, mirror.sources(), "x86_64")[0].available == "3.0.22-1~deb12u2"
    assert _index_requests(mirror) == []

    # once stale, it asks with If-Modified-Since and gets 304 Not Modified
    assert [r for r in _index_requests(mirror) if r[2] == 304] == []
    ArchiveIndex(cache, fresh_seconds=0).updates(pkgs, mirror.sources(), "x86_64")
    answered = _index_requests(mirror)
    assert len(answered) == 3 and {r[2] for r in answered} == {304}
    assert all("If-Modified-Since" in r[1] for r in answered)

    # the security suite publishes a fix: the new index is fetched and parsed
    index = mirror.root / "debian-security/dists/bookworm-security/main/binary-amd64/Packages.xz"
    text = lzma.decompress(index.read_bytes()).decode()
    index.write_bytes(lzma.compress(text.replace("Version: 3.0.22-1~deb12u2", "Version: 3.0.23-1~deb12u1").encode()))
    later = time.time() + 5
    os.utime(index, (later, later))
    mirror.requests.clear()
    updates = ArchiveIndex(cache, fresh_seconds=0).updates(pkgs, mirror.sources(), "x86_64")
    assert updates[0].available == "3.0.23-1~deb12u1"
    assert sorted(r[2] for r in _index_requests(mirror)) == [200, 304, 304]


def test_unreachable_mirror_uses_cache_or_says_so(tmp_path: Path, mirror: Mirror) -> None:
    pkgs = [InstalledPackage("openssl", "3.0.20-1~deb12u2", "amd64")]
    cache = tmp_path / "cache"
    ArchiveIndex(cache).updates(pkgs, mirror.sources(), "x86_64")
    dead = tuple(s.replace(mirror.url, "http://127.0.0.1:9") for s in mirror.sources())
    with pytest.raises(ArchiveError, match=r"127\.0\.0\.1:9/debian/dists/bookworm/main/binary-amd64/Packages\.xz"):
        ArchiveIndex(cache).updates(pkgs, dead, "x86_64")
    # a 404 for a suite that does not exist names the URL
    missing = (f"deb {mirror.url}/debian trixie-backports main",)
    with pytest.raises(ArchiveError, match="HTTP 404"):
        ArchiveIndex(cache).updates(pkgs, missing, "x86_64")


LIVE_SOURCES = (
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)


@pytest.mark.slow
def test_live_mirror_security_index(tmp_path: Path) -> None:
    """The mirror's current indexes: bookworm's release version of openssl has a security update."""
    url = "http://deb.debian.org/debian-security/dists/bookworm-security/Release"
    try:
        requests.head(url, timeout=10).raise_for_status()
    except requests.RequestException as e:
        pytest.skip(f"the Debian mirror is unreachable from here ({e}); the recorded-index tests cover the logic")
    archive = ArchiveIndex(tmp_path / "cache")
    # 3.0.11-1~deb12u1 is openssl as bookworm 12.0 shipped it; security has fixed it many times since
    old = [InstalledPackage("openssl", "3.0.11-1~deb12u1", "amd64"), InstalledPackage("libc6", "2.36-9", "amd64")]
    updates = archive.updates(old, LIVE_SOURCES, "x86_64")
    by_name = {u.name: u for u in updates}
    assert by_name["openssl"].security and by_name["openssl"].suite == "bookworm-security"
    assert updates[0].security  # security updates first
    security = parse_source(LIVE_SOURCES[1])
    assert security is not None
    assert len(archive.index(security, security.index_urls("amd64")[0]).versions) > 1000
