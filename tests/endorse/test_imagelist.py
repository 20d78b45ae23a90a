"""The HEPiX list document, its signature, the dev CA and where signing identities come from."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from pipeline.catalogue.signing import load_signing_identity, sign_image_list
from pipeline.endorse.pki import DevCa, Issued
from pipeline.errors import ConfigError, PipelineError
from pipeline.formats.imagelist import (
    ENDORSER_REQUIRED,
    IMAGE_REQUIRED,
    LIST_REQUIRED,
    Endorser,
    ImageListEntry,
    parse_date,
)
from pipeline.settings import load_settings
from tests.endorse.lists import LIST_URI, make_entry, make_list


def test_list_has_every_required_field(endorser_pair: Issued) -> None:
    endorser = Endorser.from_certificate(endorser_pair.certificate)
    doc = make_list(endorser, [make_entry(b"x", "http://127.0.0.1/x.ova")], version=7)
    body = doc["hv:imagelist"]
    assert isinstance(body, dict)
    assert set(LIST_REQUIRED) <= set(body)
    assert set(ENDORSER_REQUIRED) == set(body["hv:endorser"]["hv:x509"])
    image = body["hv:images"][0]["hv:image"]
    assert set(IMAGE_REQUIRED) <= set(image)
    assert image["hv:size"] == 1 and image["hv:ram_minimum"] == 512 and image["hv:core_minimum"] == 1
    assert image["ad:ram_recommended"] == 2048
    parse_date(body["dc:date:created"])
    assert body["dc:date:expires"].endswith("Z") and body["hv:version"] == "7"
    assert body["hv:uri"] == LIST_URI and body["ad:vo"] == "vo.example.org"
    # the identifier is stable for a given list URL (sites subscribe to it)
    again = make_list(endorser, [], version=8)["hv:imagelist"]
    assert isinstance(again, dict) and again["dc:identifier"] == body["dc:identifier"]


def test_entry_round_trips_and_accepts_appdb_strings() -> None:
    entry = make_entry(b"abc", "http://127.0.0.1/a.ova")
    assert ImageListEntry.from_hepix(entry.to_hepix()) == entry
    appdb = entry.to_hepix()
    appdb["hv:image"]["hv:size"] = "3"
    appdb["hv:image"]["hv:ram_minimum"] = "512"
    assert ImageListEntry.from_hepix(appdb) == entry


def test_entry_reports_every_missing_field() -> None:
    image = make_entry(b"abc", "http://127.0.0.1/a.ova").to_hepix()
    del image["hv:image"]["sl:checksum:sha512"]
    del image["hv:image"]["ad:mpuri"]
    image["hv:image"]["hv:size"] = "big"
    with pytest.raises(ConfigError) as err:
        ImageListEntry.from_hepix(image, "hv:images[0]")
    assert err.value.problems == [
        "hv:images[0].hv:image.sl:checksum:sha512: is required",
        "hv:images[0].hv:image.ad:mpuri: is required",
        "hv:images[0].hv:image.hv:size: 'big' is not a whole number",
    ]


def test_endorser_dn_is_openssl_oneline(dev_ca: DevCa, endorser_pair: Issued) -> None:
    endorser = Endorser.from_certificate(endorser_pair.certificate)
    assert endorser.dn == "/DC=org/DC=vmi-pipeline/O=Development/CN=vmi-pipeline dev endorser"
    assert endorser.email == "endorser@example.org"
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-subject", "-issuer", "-nameopt", "compat", "-in", str(dev_ca.endorser_cert)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out == [f"subject={endorser.dn}", f"issuer={endorser.ca}"]


def test_signed_list_verifies_with_openssl_and_carries_the_exact_json(
    dev_ca: DevCa, endorser_pair: Issued, tmp_path: Path
) -> None:
    endorser = Endorser.from_certificate(endorser_pair.certificate)
    doc = make_list(endorser, [make_entry(b"x", "http://127.0.0.1/x.ova")])
    signed = sign_image_list(doc, endorser_pair.key_pem, endorser_pair.cert_pem)
    assert b'multipart/signed; protocol="application/x-pkcs7-signature"; micalg="sha-256"' in signed
    path = tmp_path / "image.list"
    path.write_bytes(signed)
    proc = subprocess.run(
        ["openssl", "smime", "-verify", "-in", str(path), "-CAfile", str(dev_ca.ca_cert)], capture_output=True
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == doc


def test_sign_refuses_a_key_that_is_not_the_certificates(endorser_pair: Issued, second_endorser: Issued) -> None:
    with pytest.raises(PipelineError, match="does not belong"):
        sign_image_list({"hv:imagelist": {}}, second_endorser.key_pem, endorser_pair.cert_pem)


def test_dev_ca_files_and_warning(dev_ca: DevCa) -> None:
    assert "NOT FOR PRODUCTION" in dev_ca.summary()
    assert "NOT FOR PRODUCTION" in (dev_ca.folder / "README-NOT-FOR-PRODUCTION.txt").read_text()
    assert dev_ca.endorser_key.stat().st_mode & 0o077 == 0
    ca = x509.load_pem_x509_certificate(dev_ca.ca_cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_signing_identity_from_environment(dev_ca: DevCa) -> None:
    env = {"VMI_SIGNING_KEY": str(dev_ca.endorser_key), "VMI_SIGNING_CERT": str(dev_ca.endorser_cert)}
    identity = load_signing_identity(environ=env)
    assert identity.endorser.dn.endswith("/CN=vmi-pipeline dev endorser")
    assert identity.key_pem == dev_ca.endorser_key.read_bytes()


def test_signing_identity_missing_or_inside_repo(dev_ca: DevCa, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="VMI_SIGNING_KEY"):
        load_signing_identity(environ={})
    repo = tmp_path / "checkout"
    repo.mkdir()
    (repo / "k.pem").write_bytes(dev_ca.endorser_key.read_bytes())
    settings = load_settings(
        {
            "output_dir": "output",
            "work_dir": "work",
            "cache_dir": "cache",
            "repository": "file://./repository",
            "repository_public_url": "http://127.0.0.1/repo",
            "catalogue": "sqlite:///./c.db",
            "catalogue_public_url": "http://127.0.0.1",
            "accel": "tcg",
        },
        repo,
        environ={},
    )
    with pytest.raises(ConfigError) as err:
        load_signing_identity(settings, key=repo / "k.pem", cert=tmp_path / "missing.pem", environ={})
    assert err.value.problems == [
        f"{repo / 'k.pem'}: the signing key must not live inside the repository ({repo.resolve()})",
        f"{tmp_path / 'missing.pem'}: signing certificate file not found",
    ]


def test_dev_ca_task_writes_a_working_pair(tmp_path: Path) -> None:
    import sys

    out = tmp_path / "ca"
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "dev-ca", "--out", str(out)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "NOT FOR PRODUCTION" in proc.stdout and f"VMI_SIGNING_KEY={out / 'endorser.key'}" in proc.stdout
    env = {"VMI_SIGNING_KEY": str(out / "endorser.key"), "VMI_SIGNING_CERT": str(out / "endorser.pem")}
    identity = load_signing_identity(environ=env)
    signed = tmp_path / "l"
    signed.write_bytes(sign_image_list({"hv:imagelist": {}}, identity.key_pem, identity.cert_pem))
    check = subprocess.run(
        ["openssl", "smime", "-verify", "-in", str(signed), "-CAfile", str(out / "ca.pem")], capture_output=True
    )
    assert check.returncode == 0, check.stderr


def test_build_refuses_what_sites_refuse(endorser_pair: Issued) -> None:
    """The catalogue never signs a list that verify-list would refuse."""
    endorser = Endorser.from_certificate(endorser_pair.certificate)
    bad = dataclasses.replace(make_entry(b"x", "file:///etc/passwd"), sha512="F" * 128, title="a\x1bb")
    with pytest.raises(ConfigError) as err:
        make_list(endorser, [bad])
    assert err.value.problems == [
        "image list for vo.example.org: hv:imagelist.hv:images[0].hv:image.dc:title: contains the control character "
        "'\\x1b'",
        "image list for vo.example.org: hv:imagelist.hv:images[0].hv:image.sl:checksum:sha512: is not 128 lower-case "
        "hexadecimal digits",
        "image list for vo.example.org: hv:imagelist.hv:images[0].hv:image.hv:uri: 'file:///etc/passwd' is not an "
        "http(s):// URL",
    ]
    created = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    with pytest.raises(PipelineError, match=r"a lifetime of 400 days, 0:00:00 is more than sites accept \(366 days\)"):
        make_list(endorser, [], created=created, expires=created + dt.timedelta(days=400))
