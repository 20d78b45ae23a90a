"""Fixtures for endorse tests: a real throwaway CA, real keys, real files in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.endorse.pki import DevCa, Issued, issue_endorser, make_ca, make_dev_ca


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
