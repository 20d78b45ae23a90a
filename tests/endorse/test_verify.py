"""Site-side verification: every way a list can be wrong is rejected, for the right reason."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.catalogue.signing import sign_image_list
from pipeline.endorse.pki import DevCa, Issued, issue_endorser
from pipeline.errors import VerificationError
from pipeline.formats.imagelist import Endorser
from pipeline.site.verify import verify_image_list
from tests.endorse.conftest import serve_folder
from tests.endorse.lists import make_entry, make_list

ROOT = Path(__file__).resolve().parents[2]
NOW = dt.datetime.now(dt.UTC)


def write_signed(path: Path, doc: dict[str, object], signer: Issued) -> Path:
    path.write_bytes(sign_image_list(doc, signer.key_pem, signer.cert_pem))
    return path


def endorser_of(pair: Issued) -> Endorser:
    return Endorser.from_certificate(pair.certificate)


def problems_of(excinfo: pytest.ExceptionInfo[VerificationError]) -> str:
    return "\n".join(excinfo.value.problems)


def seen_version(state: Path) -> str:
    (seen,) = json.loads(state.read_text())["lists"].values()
    return str(seen["hv:version"])


def openssl_verifies(path: Path, ca: Path) -> bool:
    proc = subprocess.run(["openssl", "smime", "-verify", "-in", str(path), "-CAfile", str(ca)], capture_output=True)
    return proc.returncode == 0


@pytest.fixture
def image_url(image_file: Path) -> Iterator[str]:
    """The image served over HTTP on 127.0.0.1 (downloads from there need ``allow_private_urls``)."""
    with serve_folder(image_file.parent) as base:
        yield f"{base}/{image_file.name}"


@pytest.fixture
def good_list(tmp_path: Path, endorser_pair: Issued, image_file: Path, image_url: str) -> Path:
    doc = make_list(endorser_of(endorser_pair), [make_entry(image_file.read_bytes(), image_url)], version=5)
    return write_signed(tmp_path / "image.list", doc, endorser_pair)


def test_good_list_verifies_and_matches_openssl(good_list: Path, dev_ca: DevCa, endorser_pair: Issued) -> None:
    report = verify_image_list(good_list, dev_ca.ca_cert, endorser_dn=endorser_of(endorser_pair).dn)
    assert report.version == "5" and len(report.images) == 1
    assert report.signer_dn == endorser_of(endorser_pair).dn
    assert "OK, image list" in report.summary() and "signed by /DC=org" in report.summary()
    assert openssl_verifies(good_list, dev_ca.ca_cert)
    # the same through a file:// URL and a CA directory (hashed like /etc/grid-security/certificates)
    capath = good_list.parent / "certificates"
    capath.mkdir()
    (capath / "dev-ca.pem").write_bytes(dev_ca.ca_cert.read_bytes())
    subprocess.run(["openssl", "rehash", str(capath)], check=True)
    assert verify_image_list(good_list.as_uri(), capath).identifier == report.identifier


def test_tampered_payload(good_list: Path, dev_ca: DevCa) -> None:
    tampered = good_list.with_name("tampered.list")
    tampered.write_bytes(good_list.read_bytes().replace(b'"hv:version": "5"', b'"hv:version": "9"'))
    assert not openssl_verifies(tampered, dev_ca.ca_cert)
    with pytest.raises(VerificationError) as err:
        verify_image_list(tampered, dev_ca.ca_cert)
    assert "S/MIME signature does not verify" in problems_of(err)
    assert "digest failure" in problems_of(err)


def test_unsigned_list(tmp_path: Path, endorser_pair: Issued, dev_ca: DevCa) -> None:
    plain = tmp_path / "plain.list"
    plain.write_text(json.dumps(make_list(endorser_of(endorser_pair), [])))
    with pytest.raises(VerificationError) as err:
        verify_image_list(plain, dev_ca.ca_cert)
    assert err.value.problems == ["not S/MIME signed: Content-Type is text/plain, not multipart/signed"]


def test_stripped_signature_part(good_list: Path, dev_ca: DevCa) -> None:
    raw = good_list.read_bytes()
    boundary = raw.split(b'boundary="', 1)[1].split(b'"', 1)[0]
    content, _signature = raw.split(b"--" + boundary)[1:3]
    stripped = good_list.with_name("stripped.list")
    stripped.write_bytes(raw.split(b"--" + boundary)[0] + b"--" + boundary + content + b"--" + boundary + b"--\n")
    with pytest.raises(VerificationError) as err:
        verify_image_list(stripped, dev_ca.ca_cert)
    assert "exactly 2 MIME parts" in problems_of(err)


def test_trailing_unsigned_data(good_list: Path, dev_ca: DevCa) -> None:
    padded = good_list.with_name("padded.list")
    padded.write_bytes(good_list.read_bytes() + b'\n{"hv:imagelist": "evil"}\n')
    with pytest.raises(VerificationError) as err:
        verify_image_list(padded, dev_ca.ca_cert)
    assert "data after the end of the signed message" in problems_of(err)


def test_wrong_signer_for_the_listed_endorser(
    tmp_path: Path, endorser_pair: Issued, second_endorser: Issued, dev_ca: DevCa
) -> None:
    doc = make_list(endorser_of(endorser_pair), [])  # claims the dev endorser...
    path = write_signed(tmp_path / "l", doc, second_endorser)  # ...signed by someone else
    assert openssl_verifies(path, dev_ca.ca_cert)  # the signature itself is fine
    with pytest.raises(VerificationError) as err:
        verify_image_list(path, dev_ca.ca_cert)
    assert err.value.problems == [
        f"signer {endorser_of(second_endorser).dn} is not the list's endorser hv:dn {endorser_of(endorser_pair).dn}"
    ]


def test_consistent_list_from_an_unexpected_endorser(
    tmp_path: Path, endorser_pair: Issued, second_endorser: Issued, dev_ca: DevCa
) -> None:
    path = write_signed(tmp_path / "l", make_list(endorser_of(second_endorser), []), second_endorser)
    verify_image_list(path, dev_ca.ca_cert)  # fine without a pinned endorser
    with pytest.raises(VerificationError) as err:
        verify_image_list(path, dev_ca.ca_cert, endorser_dn=endorser_of(endorser_pair).dn)
    assert err.value.problems == [
        f"signed by {endorser_of(second_endorser).dn}, expected endorser {endorser_of(endorser_pair).dn}"
    ]


def test_signer_from_an_untrusted_ca(tmp_path: Path, other_ca: Issued, dev_ca: DevCa) -> None:
    stranger = issue_endorser(other_ca, common_name="stranger")
    path = write_signed(tmp_path / "l", make_list(endorser_of(stranger), []), stranger)
    assert not openssl_verifies(path, dev_ca.ca_cert)
    with pytest.raises(VerificationError) as err:
        verify_image_list(path, dev_ca.ca_cert)
    assert "S/MIME signature does not verify" in problems_of(err)
    assert "unable to get local issuer certificate" in problems_of(err)


def test_expired_signer_certificate(tmp_path: Path, dev_ca_issued: Issued, dev_ca: DevCa) -> None:
    old = issue_endorser(
        dev_ca_issued, "old", not_before=NOW - dt.timedelta(days=60), not_after=NOW - dt.timedelta(days=1)
    )
    path = write_signed(tmp_path / "l", make_list(endorser_of(old), []), old)
    with pytest.raises(VerificationError) as err:
        verify_image_list(path, dev_ca.ca_cert)
    assert "signer certificate expired on" in problems_of(err)


def test_expired_list(tmp_path: Path, endorser_pair: Issued, dev_ca: DevCa) -> None:
    created = NOW - dt.timedelta(weeks=5)
    doc = make_list(endorser_of(endorser_pair), [], created=created, expires=created + dt.timedelta(weeks=4))
    with pytest.raises(VerificationError) as err:
        verify_image_list(write_signed(tmp_path / "l", doc, endorser_pair), dev_ca.ca_cert)
    assert err.value.problems == [f"list expired on {doc['hv:imagelist']['dc:date:expires']}"]  # type: ignore[index]


def test_future_dated_list(tmp_path: Path, endorser_pair: Issued, dev_ca: DevCa) -> None:
    doc = make_list(endorser_of(endorser_pair), [], created=NOW + dt.timedelta(days=1))
    with pytest.raises(VerificationError) as err:
        verify_image_list(write_signed(tmp_path / "l", doc, endorser_pair), dev_ca.ca_cert)
    assert len(err.value.problems) == 1 and "list created in the future" in err.value.problems[0]


def test_rolled_back_version_and_state_kept_only_on_success(
    tmp_path: Path, endorser_pair: Issued, dev_ca: DevCa
) -> None:
    state = tmp_path / "state.json"
    source = tmp_path / "image.list"
    write_signed(source, make_list(endorser_of(endorser_pair), [], version="20261122.10"), endorser_pair)
    verify_image_list(source, dev_ca.ca_cert, state=state)
    assert seen_version(state) == "20261122.10"
    write_signed(source, make_list(endorser_of(endorser_pair), [], version="20261122.9"), endorser_pair)
    with pytest.raises(VerificationError) as err:
        verify_image_list(source, dev_ca.ca_cert, state=state)
    assert err.value.problems == ["hv:version 20261122.9 is lower than 20261122.10 seen before: rolled back"]
    assert seen_version(state) == "20261122.10"
    # a newer list that fails another check does not move the state either
    created = NOW - dt.timedelta(weeks=5)
    expired = make_list(endorser_of(endorser_pair), [], "20261122.11", created, created + dt.timedelta(days=1))
    write_signed(source, expired, endorser_pair)
    with pytest.raises(VerificationError):
        verify_image_list(source, dev_ca.ca_cert, state=state)
    assert seen_version(state) == "20261122.10"
    write_signed(source, make_list(endorser_of(endorser_pair), [], version="20261122.12"), endorser_pair)
    assert verify_image_list(source, dev_ca.ca_cert, state=state).version == "20261122.12"
    assert seen_version(state) == "20261122.12"


def test_wrong_identifier(tmp_path: Path, endorser_pair: Issued, dev_ca: DevCa) -> None:
    source = write_signed(tmp_path / "image.list", make_list(endorser_of(endorser_pair), []), endorser_pair)
    with pytest.raises(VerificationError) as err:
        verify_image_list(source, dev_ca.ca_cert, identifier="76fdee70-8119-5d33-aaaa-3c57e1c60df1")
    assert "expected 76fdee70-8119-5d33-aaaa-3c57e1c60df1: a different list" in problems_of(err)
    # a source that switches to another list (mix-and-match) is caught through the state
    state = tmp_path / "state.json"
    verify_image_list(source, dev_ca.ca_cert, state=state)
    other = make_list(endorser_of(endorser_pair), [], version=2)
    other["hv:imagelist"]["dc:identifier"] = "76fdee70-8119-5d33-aaaa-3c57e1c60df1"  # type: ignore[index]
    write_signed(source, other, endorser_pair)
    with pytest.raises(VerificationError) as err:
        verify_image_list(source, dev_ca.ca_cert, state=state)
    assert "served list" in problems_of(err)


def test_download_verifies_size_and_checksum(tmp_path: Path, good_list: Path, dev_ca: DevCa, image_file: Path) -> None:
    target = tmp_path / "cache"
    report = verify_image_list(good_list, dev_ca.ca_cert, download=target, allow_private_urls=True)
    (done,) = report.downloads
    assert done.fresh and done.path.read_bytes() == image_file.read_bytes()
    again = verify_image_list(good_list, dev_ca.ca_cert, download=target, allow_private_urls=True)
    assert not again.downloads[0].fresh  # cached copy re-hashed, not fetched again


@pytest.mark.parametrize("damage", ["truncate", "grow", "flip"])
def test_download_mismatch_is_quarantined(
    tmp_path: Path, good_list: Path, dev_ca: DevCa, image_file: Path, image_url: str, damage: str
) -> None:
    data = image_file.read_bytes()
    image_file.write_bytes(
        {"truncate": data[:-10], "grow": data + b"x" * 10, "flip": data[:-1] + bytes([data[-1] ^ 1])}[damage]
    )
    state, target = tmp_path / "state.json", tmp_path / "cache"
    with pytest.raises(VerificationError) as err:
        verify_image_list(good_list, dev_ca.ca_cert, download=target, state=state, allow_private_urls=True)
    expected = "sha512 mismatch" if damage == "flip" else "size mismatch"
    assert expected in problems_of(err)
    entry_id = "c0482bc2-bf41-5d49-aaaa-a750174a186b"
    assert not (target / entry_id).exists()
    if damage == "grow":  # the server announces more than hv:size: refused before a byte is read
        assert err.value.problems == [
            f"image {entry_id}: size mismatch: hv:size is {len(data)}, the server announces {len(data) + 10} bytes "
            f"({image_url})"
        ]
        assert list(target.iterdir()) == []
        return
    assert (target / "quarantine" / entry_id).exists()
    assert [p.name for p in target.iterdir()] == ["quarantine"]  # no partial file left behind
    assert not state.exists()


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "www"
    root.mkdir()
    with serve_folder(root) as url:
        yield root, url


def test_over_http_with_download(
    http_root: tuple[Path, str], endorser_pair: Issued, dev_ca: DevCa, tmp_path: Path
) -> None:
    root, base = http_root
    (root / "img.qcow2").write_bytes(b"qcow2 bytes" * 5000)
    entries = [make_entry((root / "img.qcow2").read_bytes(), base + "/img.qcow2")]
    write_signed(
        root / "image.list", make_list(endorser_of(endorser_pair), entries, uri=base + "/image.list"), endorser_pair
    )
    report = verify_image_list(base + "/image.list", dev_ca.ca_cert, download=tmp_path / "dl", allow_private_urls=True)
    assert report.downloads[0].size == 55000 and report.warnings == ()
    assert report.vo == "vo.example.org" and "for VO vo.example.org" in report.summary()
    # the same list served from another URL than the one it names is another list
    (root / "copy.list").write_bytes((root / "image.list").read_bytes())
    with pytest.raises(VerificationError) as err:
        verify_image_list(base + "/copy.list", dev_ca.ca_cert)
    assert err.value.problems == [
        f"the signed list is for {base}/image.list (hv:uri), not {base}/copy.list where it was served: another list"
    ]
    with pytest.raises(VerificationError) as err:
        verify_image_list(base + "/missing.list", dev_ca.ca_cert)
    assert "404" in problems_of(err)


def test_cli_exit_codes_and_one_line_per_problem(
    good_list: Path, tmp_path: Path, endorser_pair: Issued, dev_ca: DevCa
) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "invoke", "verify-list", str(good_list), "--ca", str(dev_ca.ca_cert)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert "OK, image list" in ok.stdout
    created = NOW - dt.timedelta(weeks=5)
    doc = make_list(endorser_of(endorser_pair), [], created=created, expires=created + dt.timedelta(days=1))
    bad = write_signed(tmp_path / "bad.list", doc, endorser_pair)
    proc = subprocess.run(
        [
            sys.executable, "-m", "invoke", "verify-list", str(bad), "--ca", str(dev_ca.ca_cert),
            "--endorser-dn", "/CN=somebody else",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{bad}: ") for line in lines)
    assert "expected endorser /CN=somebody else" in lines[0] and "list expired" in lines[1]


def test_replayed_list_with_the_same_version_but_older_date(
    tmp_path: Path, endorser_pair: Issued, dev_ca: DevCa
) -> None:
    state, source = tmp_path / "state.json", tmp_path / "image.list"
    write_signed(source, make_list(endorser_of(endorser_pair), [], version=3), endorser_pair)
    verify_image_list(source, dev_ca.ca_cert, state=state)
    older = make_list(endorser_of(endorser_pair), [], version=3, created=NOW - dt.timedelta(days=2))
    write_signed(source, older, endorser_pair)
    with pytest.raises(VerificationError) as err:
        verify_image_list(source, dev_ca.ca_cert, state=state)
    assert "seen before: replayed" in problems_of(err)


def test_odd_uris_and_identifiers_are_refused_before_any_download(
    tmp_path: Path, endorser_pair: Issued, dev_ca: DevCa
) -> None:
    odd = [
        ("/etc/hostname", "local-path"),
        ("file:///dev/null", "../escape"),
        ("http://user:secret@mirror.example.org/z.ova", "userinfo"),
    ]
    entries = [make_entry(b"x", "https://m.example.org/x", identifier=f"img-{n}") for n in range(len(odd))]
    doc = make_list(endorser_of(endorser_pair), entries)  # the catalogue would not build it: edited after
    for item, (uri, identifier) in zip(doc["hv:imagelist"]["hv:images"], odd, strict=True):  # type: ignore[index]
        item["hv:image"].update({"hv:uri": uri, "dc:identifier": identifier})
    source = write_signed(tmp_path / "l", doc, endorser_pair)
    with pytest.raises(VerificationError) as err:
        verify_image_list(source, dev_ca.ca_cert, download=tmp_path / "dl")
    assert err.value.problems == [
        "hv:imagelist.hv:images[0].hv:image.hv:uri: '/etc/hostname' is not an http(s):// URL",
        "hv:imagelist.hv:images[1].hv:image.dc:identifier: '../escape' is not an identifier "
        "(^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\\Z)",
        "hv:imagelist.hv:images[1].hv:image.hv:uri: 'file:///dev/null' is not an http(s):// URL",
        "hv:imagelist.hv:images[2].hv:image.hv:uri: 'http://user:secret@mirror.example.org/z.ova' carries user info "
        "(user@host): refused",
    ]
    assert not (tmp_path / "dl").exists()
