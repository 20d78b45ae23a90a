"""A site may paste the endorser DN in either spelling: OpenSSL's slash form or RFC 4514 (issue 12)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.catalogue.signing import sign_image_list
from pipeline.endorse.pki import DevCa, Issued, make_dev_ca
from pipeline.errors import ConfigError
from pipeline.formats.dn import parse_dn, rfc4514_dn
from pipeline.formats.imagelist import Endorser
from tests.endorse.lists import make_entry, make_list

ROOT = Path(__file__).resolve().parents[2]
# verify-list checks only the signature here: the image is never downloaded, but its URL must be http(s)
IMAGE_URL = "https://repo.example.org/debian-12/debian-12-2026.11.22.ova"


def test_both_spellings_of_one_subject_give_the_list_form(endorser_pair: Issued) -> None:
    cert = endorser_pair.certificate
    slash = Endorser.from_certificate(cert).dn
    assert slash == "/DC=org/DC=vmi-pipeline/O=Development/CN=vmi-pipeline dev endorser"
    assert rfc4514_dn(cert.subject) == "CN=vmi-pipeline dev endorser,O=Development,DC=vmi-pipeline,DC=org"
    assert parse_dn(rfc4514_dn(cert.subject)) == slash
    assert parse_dn(slash) == slash
    assert parse_dn("  emailAddress=a@b.org,CN=x\\,y,DC=org ") == "/DC=org/CN=x,y/emailAddress=a@b.org"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("somebody", "'somebody' is neither an OpenSSL DN (/DC=org/CN=name) nor an RFC 4514 DN (CN=name,DC=org)"),
        ("/CN=x/nonsense", "'/CN=x/nonsense' is not a DN: each /-separated part must be KEY=value"),
        ("CN=", "'CN=' is neither an OpenSSL DN"),
        ("", "the DN is empty"),
    ],
)
def test_bad_dns_are_refused_in_one_line(text: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_dn(text)
    assert str(err.value).startswith(f"--endorser-dn: {reason}")


def _verify(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", "verify-list", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_cli_accepts_the_rfc4514_dn(tmp_path: Path, endorser_pair: Issued, dev_ca: DevCa, image_file: Path) -> None:
    endorser = Endorser.from_certificate(endorser_pair.certificate)
    doc = make_list(endorser, [make_entry(image_file.read_bytes(), IMAGE_URL)], version=3)
    listed = tmp_path / "image.list"
    listed.write_bytes(sign_image_list(doc, endorser_pair.key_pem, endorser_pair.cert_pem))
    rfc = rfc4514_dn(endorser_pair.certificate.subject)
    for dn in (rfc, endorser.dn):
        ok = _verify([str(listed), "--ca", str(dev_ca.ca_cert), "--endorser-dn", dn])
        assert ok.returncode == 0, ok.stderr
        assert "OK, image list" in ok.stdout
    other = _verify([str(listed), "--ca", str(dev_ca.ca_cert), "--endorser-dn", "CN=somebody else,DC=org"])
    assert other.returncode == 1
    assert "expected endorser /DC=org/CN=somebody else" in other.stderr
    bad = _verify([str(listed), "--ca", str(dev_ca.ca_cert), "--endorser-dn", "somebody"])
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        "error: --endorser-dn: 'somebody' is neither an OpenSSL DN (/DC=org/CN=name)"
        " nor an RFC 4514 DN (CN=name,DC=org)"
    )


def test_dev_ca_defaults_outside_the_clone(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "dev-ca"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(home)},
    )
    assert proc.returncode == 0, proc.stderr
    assert (home / ".vmi-dev-ca" / "endorser.key").stat().st_mode & 0o777 == 0o600
    assert f"endorser key:  {home}/.vmi-dev-ca/endorser.key" in proc.stdout
    assert "endorser DN (RFC 4514): CN=vmi-pipeline dev endorser,O=Development,DC=vmi-pipeline,DC=org" in proc.stdout


def test_make_dev_ca_reports_both_dn_forms(tmp_path: Path) -> None:
    made = make_dev_ca(tmp_path / "ca")
    assert made.endorser_dn == "/DC=org/DC=vmi-pipeline/O=Development/CN=vmi-pipeline dev endorser"
    assert made.endorser_rfc4514 == "CN=vmi-pipeline dev endorser,O=Development,DC=vmi-pipeline,DC=org"
