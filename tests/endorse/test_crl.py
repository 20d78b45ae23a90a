"""`verify-list --crl` (issue 12 item 7): a revoked signer is refused, like vmcatcher's CRL rule."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.catalogue.signing import sign_image_list
from pipeline.endorse.pki import DevCa, Issued, issue_crl, make_ca
from pipeline.formats.imagelist import Endorser
from pipeline.site.crl import load_crls, revocation_problems, signer_certificates, trusted_cas
from tests.endorse.lists import make_entry, make_list

ROOT = Path(__file__).resolve().parents[2]
# verify-list checks only the signature here: the image is never downloaded, but its URL must be http(s)
IMAGE_URL = "https://repo.example.org/debian-12/debian-12-2026.11.22.ova"
NOW = dt.datetime.now(dt.UTC)


def _signed(tmp_path: Path, signer: Issued, image_file: Path) -> Path:
    doc = make_list(Endorser.from_certificate(signer.certificate), [make_entry(image_file.read_bytes(), IMAGE_URL)])
    path = tmp_path / "image.list"
    path.write_bytes(sign_image_list(doc, signer.key_pem, signer.cert_pem))
    return path


def _verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", "verify-list", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_a_revoked_signer_is_refused(
    tmp_path: Path,
    dev_ca: DevCa,
    dev_ca_issued: Issued,
    endorser_pair: Issued,
    second_endorser: Issued,
    image_file: Path,
) -> None:
    listed = _signed(tmp_path, endorser_pair, image_file)
    crl = tmp_path / "ca.crl"
    crl.write_bytes(issue_crl(dev_ca_issued, [second_endorser.certificate]))
    ok = _verify(str(listed), "--ca", str(dev_ca.ca_cert), "--crl", str(crl))
    assert ok.returncode == 0, ok.stderr
    crl.write_bytes(issue_crl(dev_ca_issued, [second_endorser.certificate, endorser_pair.certificate]))
    revoked = _verify(str(listed), "--ca", str(dev_ca.ca_cert), "--crl", str(crl))
    assert revoked.returncode == 1
    serial = f"{endorser_pair.certificate.serial_number:x}"
    assert revoked.stderr.startswith(
        f"{listed}: signer /DC=org/DC=vmi-pipeline/O=Development/CN=vmi-pipeline dev endorser"
        f" (serial {serial}) is revoked"
    )
    assert "by the CRL of /DC=org/DC=vmi-pipeline/CN=vmi-pipeline DEV CA - NOT FOR PRODUCTION" in revoked.stderr


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("expired", "expired on"),
        ("future", "was issued in the future"),
        ("forged", "is not signed by a trusted CA: ignoring it"),
        (
            "other-ca",
            "no CRL of the signer's CA /DC=org/DC=vmi-pipeline/CN=vmi-pipeline DEV CA - NOT FOR PRODUCTION given",
        ),
    ],
)
def test_unusable_crls_are_refusals(
    tmp_path: Path,
    dev_ca: DevCa,
    dev_ca_issued: Issued,
    endorser_pair: Issued,
    image_file: Path,
    case: str,
    reason: str,
) -> None:
    listed = _signed(tmp_path, endorser_pair, image_file)
    other = make_ca("someone else's CA")
    if case == "expired":
        data = issue_crl(dev_ca_issued, last_update=NOW - dt.timedelta(days=9), next_update=NOW - dt.timedelta(days=2))
    elif case == "future":
        data = issue_crl(dev_ca_issued, last_update=NOW + dt.timedelta(days=1), next_update=NOW + dt.timedelta(days=8))
    elif case == "forged":  # right issuer name, signed by another key
        data = issue_crl(Issued(other.key_pem, dev_ca_issued.cert_pem))
    else:
        data = issue_crl(other)
    crls, problems = load_crls(data, "ca.crl")
    assert problems == []
    found = revocation_problems(signer_certificates(listed.read_bytes()), crls, trusted_cas(dev_ca.ca_cert))
    assert len(found) == 1 and reason in found[0]


def test_bad_crl_files_and_unsigned_lists(tmp_path: Path) -> None:
    crls, problems = load_crls(b"not a crl", "ca.crl")
    assert crls == [] and problems[0].startswith("ca.crl: not a CRL in PEM or DER")
    assert signer_certificates(b"Content-Type: text/plain\n\n{}") == []
    assert revocation_problems([], [], []) == ["no signer certificate in the list to check against the CRL"]
