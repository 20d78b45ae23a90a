"""The rebuild decision reads trixie's indexes (debian-13's sources) the same way as bookworm's: the
live mirror's trixie-updates and trixie-security Packages.xz, security updates first."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from pipeline.appliance import find_appliance
from pipeline.builder.bootstrap import apt_sources
from pipeline.manifest import InstalledPackage
from pipeline.rebuild.archive import ArchiveIndex, parse_source

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_live_trixie_indexes_find_a_security_update(tmp_path: Path) -> None:
    url = "http://deb.debian.org/debian-security/dists/trixie-security/Release"
    try:
        requests.head(url, timeout=10).raise_for_status()
    except requests.RequestException as e:
        pytest.skip(f"the Debian mirror is unreachable from here ({e}); the recorded-index tests cover the logic")
    bootstrap = find_appliance(ROOT / "packer_templates", "debian-13").base.bootstrap
    assert bootstrap is not None
    sources = apt_sources(bootstrap)[1:]  # trixie-updates and trixie-security (the release index is 10x bigger)
    assert [parse_source(s).suite for s in sources] == ["trixie-updates", "trixie-security"]  # type: ignore[union-attr]
    archive = ArchiveIndex(tmp_path / "cache")
    security = parse_source(sources[1])
    assert security is not None
    versions = archive.index(security, security.index_urls("amd64")[0]).versions
    assert len(versions) > 100
    name = sorted(versions)[0]
    installed = [InstalledPackage(name, "0~", "amd64")]
    updates = archive.updates(installed, sources, "x86_64")
    assert updates and updates[0].security and updates[0].suite == "trixie-security", updates
