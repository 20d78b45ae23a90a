"""Hostile lists and hostile servers: trust anchors, list identity, downloads, strict fields, signers.

Every list here is really signed (by the dev CA's endorser unless a test says otherwise) and every
server is a real HTTP server on 127.0.0.1; each refusal is asserted with its exact line.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pipeline.catalogue.signing import sign_image_list
from pipeline.endorse.pki import DevCa, Issued, issue_endorser
from pipeline.errors import ConfigError, VerificationError
from pipeline.formats.imagelist import Endorser, format_date, list_identifier
from pipeline.site.verify import address_problem, smime_verify_argv, verify_image_list
from tests.endorse.conftest import serve_folder
from tests.endorse.lists import LIST_URI, make_entry, make_list
from tests.fuzzing import bounded

ROOT = Path(__file__).resolve().parents[2]
NOW = dt.datetime.now(dt.UTC)
IMAGE_ID = "c0482bc2-bf41-5d49-aaaa-a750174a186b"


def endorser_of(pair: Issued) -> Endorser:
    return Endorser.from_certificate(pair.certificate)


def write_signed(path: Path, doc: dict[str, object], signer: Issued) -> Path:
    path.write_bytes(sign_image_list(doc, signer.key_pem, signer.cert_pem))
    return path


def sign_bytes(payload: bytes, signer: Issued) -> bytes:
    """Sign exact bytes (JSON no serialiser would write: duplicate keys, NaN, deep nesting...)."""
    key = serialization.load_pem_private_key(signer.key_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(payload)
        .add_signer(signer.certificate, key, hashes.SHA256())
        .sign(serialization.Encoding.SMIME, [pkcs7.PKCS7Options.DetachedSignature])
    )


def refusal(source: Path | str, ca: Path, **kwargs: object) -> list[str]:
    with pytest.raises(VerificationError) as err:
        verify_image_list(source, ca, **kwargs)  # type: ignore[arg-type]
    return err.value.problems


# ---- §2: only the CA given anchors trust ---------------------------------------------------------------


def test_a_ca_in_the_default_trust_store_anchors_nothing(
    tmp_path: Path, other_ca: Issued, dev_ca: DevCa, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A "publicly trusted" CA (here: in the store SSL_CERT_FILE/SSL_CERT_DIR name) signs a consistent
    list; the site trusts only its own CA and must refuse it."""
    public = issue_endorser(other_ca, common_name="someone with a public S/MIME certificate")
    listed = write_signed(tmp_path / "image.list", make_list(endorser_of(public), []), public)
    store = tmp_path / "store"
    store.mkdir()
    (store / "public-ca.pem").write_bytes(other_ca.cert_pem)
    subprocess.run(["openssl", "rehash", str(store)], check=True)
    env = {"SSL_CERT_FILE": str(store / "public-ca.pem"), "SSL_CERT_DIR": str(store)}
    # the defect: plain `openssl smime -verify -CAfile OURS` still trusts the default store
    plain = ["openssl", "smime", "-verify", "-in", str(listed), "-CAfile", str(dev_ca.ca_cert), "-out", "/dev/null"]
    assert subprocess.run(plain, env=env, capture_output=True).returncode == 0
    # the command the verifier runs refuses it even with that environment (not only thanks to run()'s scrub)
    argv = smime_verify_argv(listed, dev_ca.ca_cert, tmp_path / "signers.pem", tmp_path / "payload")
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "unable to get local issuer certificate" in proc.stderr
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert refusal(listed, dev_ca.ca_cert) == [
        f"S/MIME signature does not verify against {dev_ca.ca_cert}: unable to get local issuer certificate"
    ]
    # and the public CA, named explicitly, is what it takes
    assert verify_image_list(listed, store / "public-ca.pem").signer_dn == endorser_of(public).dn


def test_without_a_pinned_dn_the_list_endorser_must_be_the_signer(
    tmp_path: Path, endorser_pair: Issued, second_endorser: Issued, dev_ca: DevCa
) -> None:
    doc = make_list(endorser_of(endorser_pair), [])
    doc["hv:imagelist"]["hv:endorser"]["hv:x509"]["hv:ca"] = "/CN=some other CA"  # type: ignore[index]
    listed = write_signed(tmp_path / "l", doc, endorser_pair)
    assert refusal(listed, dev_ca.ca_cert) == [
        f"signer's CA {endorser_of(endorser_pair).ca} is not the list's endorser hv:ca /CN=some other CA"
    ]


# ---- §2 and more: what the signer's certificate may be -------------------------------------------------


def issue(
    ca: Issued,
    name: str,
    *,
    is_ca: bool = False,
    usage: x509.KeyUsage | None = None,
    eku: list[x509.ObjectIdentifier],
    bits: int = 2048,
) -> Issued:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    )
    if usage is not None:
        builder = builder.add_extension(usage, critical=True)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    cert = builder.sign(ca_key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return Issued(key_pem, cert.public_bytes(serialization.Encoding.PEM))


CERT_SIGN_ONLY = x509.KeyUsage(False, False, False, False, False, True, False, False, False)
SIGNING = x509.KeyUsage(True, False, False, False, False, False, False, False, False)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("ca", "signer certificate is a CA certificate (basicConstraints CA:TRUE), not an endorser's"),
        ("key-usage", "signer certificate's keyUsage allows neither digitalSignature nor nonRepudiation"),
        ("eku", "signer certificate's extendedKeyUsage does not include emailProtection (S/MIME)"),
        ("rsa-1024", "signer key is RSA-1024: at least RSA-2048 (IGTF's minimum) is required"),
    ],
)
def test_signer_certificate_must_be_an_smime_end_entity(
    tmp_path: Path, dev_ca_issued: Issued, dev_ca: DevCa, kind: str, expected: str
) -> None:
    protection = [ExtendedKeyUsageOID.EMAIL_PROTECTION]
    signer = {
        "ca": lambda: issue(dev_ca_issued, "a CA", is_ca=True, usage=SIGNING, eku=protection),
        "key-usage": lambda: issue(dev_ca_issued, "cert signer", usage=CERT_SIGN_ONLY, eku=protection),
        "eku": lambda: issue(dev_ca_issued, "tls client", usage=SIGNING, eku=[ExtendedKeyUsageOID.CLIENT_AUTH]),
        "rsa-1024": lambda: issue(dev_ca_issued, "weak", usage=SIGNING, eku=protection, bits=1024),
    }[kind]()
    listed = write_signed(tmp_path / "l", make_list(endorser_of(signer), []), signer)
    # OpenSSL's purpose check catches the usage cases; a CA with digitalSignature and RSA-1024 it accepts
    openssl = kind in ("key-usage", "eku")
    purpose = f"S/MIME signature does not verify against {dev_ca.ca_cert}: unsuitable certificate purpose"
    assert refusal(listed, dev_ca.ca_cert) == ([purpose, expected] if openssl else [expected])


# ---- §3: a list is bound to its URL and VO; state is per list identity ------------------------------


@pytest.fixture
def catalogue_site(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "www"
    for vo in ("vo.a.org", "vo.b.org"):
        (root / "vo" / vo).mkdir(parents=True)
    with serve_folder(root) as url:
        yield root, url


def publish_list(root: Path, base: str, vo: str, signer: Issued, version: int, *, at: str | None = None) -> str:
    uri = f"{base}/vo/{vo}/image.list"
    doc = make_list(endorser_of(signer), [], version=version, uri=uri, vo=vo)
    write_signed(root / "vo" / (at or vo) / "image.list", doc, signer)
    return uri


def test_a_list_for_one_vo_served_at_another_vos_url_is_refused(
    catalogue_site: tuple[Path, str], endorser_pair: Issued, dev_ca: DevCa, tmp_path: Path
) -> None:
    root, base = catalogue_site
    state = tmp_path / "state.json"
    a_url = publish_list(root, base, "vo.a.org", endorser_pair, 7)
    b_url = publish_list(root, base, "vo.b.org", endorser_pair, 2)
    assert verify_image_list(a_url, dev_ca.ca_cert, state=state, vo="vo.a.org").vo == "vo.a.org"
    assert verify_image_list(b_url, dev_ca.ca_cert, state=state).version == "2"
    # VO A's (newer, validly signed) list is served at VO B's URL
    publish_list(root, base, "vo.a.org", endorser_pair, 8, at="vo.b.org")
    before = state.read_text()
    assert refusal(b_url, dev_ca.ca_cert, state=state) == [
        f"the signed list is for {a_url} (hv:uri), not {b_url} where it was served: another list"
    ]
    assert state.read_text() == before
    # VO B's genuine next list still passes, and each list keeps its own identity in the state
    publish_list(root, base, "vo.b.org", endorser_pair, 3)
    assert verify_image_list(b_url, dev_ca.ca_cert, state=state).version == "3"
    lists = json.loads(state.read_text())["lists"]
    assert sorted(lists) == sorted(f"{list_identifier(u)} {u}" for u in (a_url, b_url))
    assert {v["hv:version"] for v in lists.values()} == {"7", "3"}


def test_state_is_per_identifier_and_url(tmp_path: Path, endorser_pair: Issued, dev_ca: DevCa) -> None:
    """Two lists sharing a dc:identifier at two URLs (a writer with fixed ids) never roll each other back."""
    state = tmp_path / "state.json"
    for n, (uri, version) in enumerate((("https://a.example.org/lists/x.list", 9), (LIST_URI, 2))):
        doc = make_list(endorser_of(endorser_pair), [], version=version, uri=uri)
        doc["hv:imagelist"]["dc:identifier"] = "0f0e5c38-shared"  # type: ignore[index]
        verify_image_list(write_signed(tmp_path / f"{n}.list", doc, endorser_pair), dev_ca.ca_cert, state=state)
    assert len(json.loads(state.read_text())["lists"]) == 2


def test_state_written_before_per_url_identities_still_catches_a_rollback(
    tmp_path: Path, endorser_pair: Issued, dev_ca: DevCa
) -> None:
    doc = make_list(endorser_of(endorser_pair), [], version=5)
    list_id = doc["hv:imagelist"]["dc:identifier"]  # type: ignore[index]
    state = tmp_path / "state.json"
    old = {"hv:version": "9", "dc:date:created": "2026-01-01T00:00:00Z", "hv:uri": LIST_URI}
    state.write_text(json.dumps({"sources": {}, "lists": {list_id: old}}))
    assert refusal(write_signed(tmp_path / "l", doc, endorser_pair), dev_ca.ca_cert, state=state) == [
        "hv:version 5 is lower than 9 seen before: rolled back"
    ]


def test_vo_pin_and_vo_named_in_the_url(tmp_path: Path, endorser_pair: Issued, dev_ca: DevCa) -> None:
    listed = write_signed(tmp_path / "l", make_list(endorser_of(endorser_pair), []), endorser_pair)
    assert refusal(listed, dev_ca.ca_cert, vo="vo.b.org") == [
        "the signed list is for VO vo.example.org, expected VO vo.b.org"
    ]
    doc = make_list(endorser_of(endorser_pair), [], vo="vo.b.org")  # hv:uri names vo.example.org
    assert refusal(write_signed(tmp_path / "m", doc, endorser_pair), dev_ca.ca_cert) == [
        f"hv:imagelist.ad:vo vo.b.org is not the VO its hv:uri {LIST_URI} names"
    ]


# ---- §4: downloads only over http(s), from public addresses, bounded by hv:size -------------------------


class _Recorder(http.server.BaseHTTPRequestHandler):
    routes: dict[str, Callable[[http.server.BaseHTTPRequestHandler], None]] = {}
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        type(self).seen.append(self.path)
        type(self).routes[self.path](self)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def hostile_server(
    routes: dict[str, Callable[[http.server.BaseHTTPRequestHandler], None]],
) -> Iterator[tuple[str, list[str]]]:
    handler = type("Handler", (_Recorder,), {"routes": routes, "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.seen
    finally:
        server.shutdown()
        server.server_close()


def send(status: int, body: bytes = b"", **headers: str) -> Callable[[http.server.BaseHTTPRequestHandler], None]:
    def reply(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        for name, value in headers.items():
            h.send_header(name.replace("_", "-"), value)
        if "Content_Length" not in headers:
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    return reply


def endless(h: http.server.BaseHTTPRequestHandler) -> None:
    """No Content-Length, and far more than hv:size (the connection closes when the client stops)."""
    h.protocol_version = "HTTP/1.0"
    h.send_response(200)
    h.end_headers()
    with contextlib.suppress(OSError):
        for _ in range(4096):
            h.wfile.write(b"x" * 65536)


def one_image_list(tmp_path: Path, signer: Issued, uri: str, payload: bytes = b"image bytes") -> Path:
    return write_signed(tmp_path / "image.list", make_list(endorser_of(signer), [make_entry(payload, uri)]), signer)


@pytest.mark.parametrize(
    ("host", "shown"),
    [
        ("127.0.0.1", "127.0.0.1 resolves to 127.0.0.1, a loopback address"),
        ("localhost", "localhost resolves to "),
        ("0x7f000001", "0x7f000001 resolves to 127.0.0.1, a loopback address"),
        ("127.1", "127.1 resolves to 127.0.0.1, a loopback address"),
        ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1 resolves to 127.0.0.1, a loopback address"),
    ],
)
def test_downloads_from_loopback_are_refused_before_any_request(
    tmp_path: Path, endorser_pair: Issued, dev_ca: DevCa, host: str, shown: str
) -> None:
    with hostile_server({"/img": send(200, b"image bytes")}) as (base, seen):
        url = base.replace("127.0.0.1", host) + "/img"
        listed = one_image_list(tmp_path, endorser_pair, url)
        (problem,) = refusal(listed, dev_ca.ca_cert, download=tmp_path / "dl")
        assert seen == []  # not one byte was sent to the internal service
        assert problem.startswith(f"image {IMAGE_ID}: {shown}")
        assert problem.endswith(f": not downloaded (--allow-private-urls to allow) ({url})")
        assert verify_image_list(listed, dev_ca.ca_cert, download=tmp_path / "dl", allow_private_urls=True).downloads


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("10.1.2.3", "10.1.2.3, a private address"),
        ("192.168.0.1", "192.168.0.1, a private address"),
        ("172.16.0.1", "172.16.0.1, a private address"),
        ("169.254.169.254", "169.254.169.254, a link-local address"),  # cloud metadata
        ("100.64.0.1", "100.64.0.1, a non-public address"),  # carrier-grade NAT
        ("0.0.0.0", "0.0.0.0, a unspecified address"),
        ("224.0.0.1", "224.0.0.1, a multicast address"),
        ("::1", "::1, a loopback address"),
        ("fe80::1%eth0", "fe80::1, a link-local address"),
        ("fd00::1", "fd00::1, a private address"),
        ("::ffff:10.0.0.1", "10.0.0.1, a private address"),
        ("2002:7f00:1::", "127.0.0.1, a loopback address"),  # 6to4
        ("64:ff9b::a9fe:a9fe", "169.254.169.254, a link-local address"),  # NAT64
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "10.0.0.1, a private address"),  # Teredo, client 10.0.0.1
        ("8.8.8.8", None),
        ("2001:4860:4860::8888", None),
    ],
)
def test_address_classes(address: str, expected: str | None) -> None:
    assert address_problem(address) == expected


def test_redirects_are_checked_hop_by_hop(tmp_path: Path, endorser_pair: Issued, dev_ca: DevCa) -> None:
    routes = {
        "/to-file": send(302, Location="file:///etc/passwd"),
        "/to-userinfo": send(301, Location="http://admin:admin@127.0.0.1:1/img"),
        "/loop": send(307, Location="/loop"),
        "/to-ok": send(308, Location="/ok"),
        "/ok": send(200, b"image bytes"),
    }
    with hostile_server(routes) as (base, seen):
        for path, reason in (
            ("/to-file", "'file:///etc/passwd' is not an http(s):// URL"),
            ("/to-userinfo", "'http://admin:admin@127.0.0.1:1/img' carries user info (user@host): refused"),
            ("/loop", "more than 5 redirects"),
        ):
            listed = one_image_list(tmp_path, endorser_pair, base + path)
            assert refusal(listed, dev_ca.ca_cert, download=tmp_path / "dl", allow_private_urls=True) == [
                f"image {IMAGE_ID}: {reason} ({base}{path})"
            ]
        assert seen.count("/loop") == 6
        listed = one_image_list(tmp_path, endorser_pair, base + "/to-ok")
        report = verify_image_list(listed, dev_ca.ca_cert, download=tmp_path / "dl", allow_private_urls=True)
        assert report.downloads[0].path.read_bytes() == b"image bytes"


def test_a_server_that_sends_more_than_hv_size_is_cut_off(tmp_path: Path, endorser_pair: Issued, dev_ca: DevCa) -> None:
    with hostile_server({"/img": endless, "/gz": send(200, b"image bytes", Content_Encoding="gzip")}) as (base, _):
        listed = one_image_list(tmp_path, endorser_pair, base + "/img")
        assert refusal(listed, dev_ca.ca_cert, download=tmp_path / "dl", allow_private_urls=True) == [
            f"image {IMAGE_ID}: size mismatch: hv:size is 11, got more than 11 bytes (quarantined in "
            f"{tmp_path / 'dl' / 'quarantine'})"
        ]
        assert (tmp_path / "dl" / "quarantine" / IMAGE_ID).stat().st_size == 12  # one byte past, no more
        listed = one_image_list(tmp_path, endorser_pair, base + "/gz")
        assert refusal(listed, dev_ca.ca_cert, download=tmp_path / "dl2", allow_private_urls=True) == [
            f"image {IMAGE_ID}: download failed: the server sent Content-Encoding 'gzip', not the file itself "
            f"({base}/gz)"
        ]


# ---- strict fields: one line per problem, naming the field --------------------------------------------


def good_doc(signer: Issued) -> dict[str, object]:
    return make_list(endorser_of(signer), [make_entry(b"image bytes", "https://mirror.example.org/img.ova")])


def image_of(doc: dict[str, object]) -> dict[str, object]:
    return doc["hv:imagelist"]["hv:images"][0]["hv:image"]  # type: ignore[index,no-any-return]


AT = "hv:imagelist.hv:images[0].hv:image"
ID_SHAPE = "(^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\\Z)"
NOT_A_DATE = "is not a %Y-%m-%dT%H:%M:%SZ date"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("sl:checksum:sha512", "A" * 128, f"{AT}.sl:checksum:sha512: is not 128 lower-case hexadecimal digits"),
        ("sl:checksum:sha512", "a" * 127, f"{AT}.sl:checksum:sha512: is not 128 lower-case hexadecimal digits"),
        ("hv:size", 0, f"{AT}.hv:size: 0 is out of range (1 to 1099511627776)"),
        ("hv:size", -5, f"{AT}.hv:size: -5 is out of range (1 to 1099511627776)"),
        ("hv:size", 2**41, f"{AT}.hv:size: 2199023255552 is out of range (1 to 1099511627776)"),
        ("hv:size", "\u00b2", f"{AT}.hv:size: '\\xb2' is not a whole number"),
        ("hv:size", True, f"{AT}.hv:size: True is not a whole number"),
        ("hv:size", [1], f"{AT}.hv:size: a JSON array is not a whole number"),
        ("hv:ram_minimum", 2**40, f"{AT}.hv:ram_minimum: 1099511627776 is out of range (0 to 2147483647)"),
        ("dc:title", {"a": 1}, f"{AT}.dc:title: a JSON object is not a string"),
        ("dc:title", "Debian\x1b[2J", f"{AT}.dc:title: contains the control character '\\x1b'"),
        ("dc:title", "Debian\u202egnp.exe", f"{AT}.dc:title: contains the bidirectional control U+202E"),
        ("dc:title", "Debian\ud800", f"{AT}.dc:title: contains a lone surrogate \\ud800"),
        ("hv:version", "1.0\r\nX-Evil: 1", f"{AT}.hv:version: contains the control character '\\r'"),
        ("dc:identifier", "a/b", f"{AT}.dc:identifier: 'a/b' is not an identifier {ID_SHAPE}"),
        ("dc:identifier", 5, f"{AT}.dc:identifier: 5 is not a string"),
        ("hv:uri", "ftp://mirror.example.org/x", f"{AT}.hv:uri: 'ftp://mirror.example.org/x' is not an http(s):// URL"),
        ("hv:uri", "https://m.example.org:99999/x",
         f"{AT}.hv:uri: 'https://m.example.org:99999/x' is not a URL (Port out of range 0-65535)"),
        ("hv:uri", "https:///x", f"{AT}.hv:uri: 'https:///x' names no host"),
        ("hv:uri", "https://m.example.org/a b", f"{AT}.hv:uri: 'https://m.example.org/a b' contains white space"),
        ("dc:date:expires", "2026-13-01T00:00:00Z", f"{AT}.dc:date:expires: '2026-13-01T00:00:00Z' {NOT_A_DATE}"),
        ("dc:date:expires", "\uff12026-01-01T00:00:00Z",
         f"{AT}.dc:date:expires: '\\uff12026-01-01T00:00:00Z' {NOT_A_DATE}"),
    ],
)  # fmt: skip
def test_strict_image_fields(
    tmp_path: Path, endorser_pair: Issued, dev_ca: DevCa, field: str, value: object, expected: str
) -> None:
    doc = good_doc(endorser_pair)
    image_of(doc)[field] = value
    assert refusal(write_signed(tmp_path / "l", doc, endorser_pair), dev_ca.ca_cert) == [expected]


L = "hv:imagelist"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("dc:identifier", "x" * 200, f"{L}.dc:identifier: '{'x' * 76}... is not an identifier {ID_SHAPE}"),
        ("hv:version", ["1"], f"{L}.hv:version: a JSON array is not a string"),
        ("hv:version", "1 2", f"{L}.hv:version: '1 2' is not a version (^[A-Za-z0-9][A-Za-z0-9._+~:-]{{0,63}}\\Z)"),
        ("hv:uri", "http://u@h/l", f"{L}.hv:uri: 'http://u@h/l' carries user info (user@host): refused"),
        ("ad:vo", "../vo", f"{L}.ad:vo: '../vo' is not a VO name (^[A-Za-z0-9][A-Za-z0-9._-]{{0,254}}\\Z)"),
        ("hv:images", {"hv:image": {}}, f"{L}.hv:images: is not a list"),
        ("hv:endorser", [], f"{L}.hv:endorser.hv:x509: is required"),
        ("dc:date:created", 20260101, f"{L}.dc:date:created: 20260101 is not a %Y-%m-%dT%H:%M:%SZ date"),
    ],
)  # fmt: skip
def test_strict_list_fields(
    tmp_path: Path, endorser_pair: Issued, dev_ca: DevCa, field: str, value: object, expected: str
) -> None:
    doc = good_doc(endorser_pair)
    doc["hv:imagelist"][field] = value  # type: ignore[index]
    assert refusal(write_signed(tmp_path / "l", doc, endorser_pair), dev_ca.ca_cert) == [expected]


def test_endorser_fields_must_be_strings(tmp_path: Path, endorser_pair: Issued, dev_ca: DevCa) -> None:
    doc = good_doc(endorser_pair)
    doc["hv:imagelist"]["hv:endorser"]["hv:x509"]["hv:dn"] = {"$ne": ""}  # type: ignore[index]
    assert refusal(write_signed(tmp_path / "l", doc, endorser_pair), dev_ca.ca_cert) == [
        "hv:imagelist.hv:endorser.hv:x509.hv:dn: a JSON object is not a string"
    ]


def test_list_lifetime_is_capped(tmp_path: Path, endorser_pair: Issued, dev_ca: DevCa) -> None:
    created = NOW - dt.timedelta(minutes=1)
    doc = make_list(endorser_of(endorser_pair), [], created=created)
    body = doc["hv:imagelist"]
    body["dc:date:expires"] = format_date(created + dt.timedelta(days=367))  # type: ignore[index]
    assert refusal(write_signed(tmp_path / "l", doc, endorser_pair), dev_ca.ca_cert) == [
        f"hv:imagelist.dc:date:expires: {body['dc:date:expires']} is more than 366 days after "  # type: ignore[index]
        f"dc:date:created {body['dc:date:created']}"  # type: ignore[index]
    ]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t.replace(b'"hv:version": "1"\n', b'"hv:version": "1", "hv:version": "99"\n'),
         "signed payload: the key 'hv:version' appears twice in one object"),
        (lambda t: t.replace(b'"hv:size": 11', b'"hv:size": 1' + b"0" * 5000),
         "signed payload: the number 10000000000000000000... has more than 19 digits"),
        (lambda t: t.replace(b'"hv:size": 11', b'"hv:size": NaN'), "signed payload: NaN is not JSON"),
        (lambda t: t.replace(b'"hv:size": 11', b'"hv:size": 1e999'),
         "signed payload: the number 1e999 is not a whole number (no fractions in an image list)"),
        (lambda t: t.replace(b'"ad:vo": "vo.example.org"', b'"ad:vo": ' + b"[" * 100_000 + b"]" * 100_000),
         "signed payload nests deeper than 16 levels"),
        (lambda t: t.replace(b'"ad:vo": "vo.example.org"', b'"ad:vo": ' + b"[" * 20 + b"]" * 20),
         "signed payload nests deeper than 16 levels (at hv:imagelist.ad:vo" + "[0]" * 14 + ")"),
        (lambda t: t.replace(b'"ad:vo": "vo.example.org"', b'"ad:vo": "\xff"'), "signed payload is not UTF-8 (byte "),
        (lambda t: b"[1, 2]", "signed payload has no 'hv:imagelist' object: not a HEPiX image list"),
        (lambda t: b"", "signed payload is not JSON: Expecting value: line 1 column 1 (char 0)"),
        (lambda t: t.replace(b'"ad:vo"', b'"ad:\\u0000vo"'),
         "hv:imagelist: a key contains the control character '\\x00'"),
    ],
)  # fmt: skip
def test_any_json_gives_one_line_never_a_crash(
    tmp_path: Path, endorser_pair: Issued, dev_ca: DevCa, edit: Callable[[bytes], bytes], expected: str
) -> None:
    doc = good_doc(endorser_pair)
    text = (json.dumps(doc, sort_keys=True, indent=2) + "\n").encode()
    edited = edit(text)
    assert edited != text
    listed = tmp_path / "l"
    listed.write_bytes(sign_bytes(edited, endorser_pair))
    (problem,) = refusal(listed, dev_ca.ca_cert)
    assert problem.startswith(expected)


def test_cli_prints_one_line_per_problem_and_no_traceback(tmp_path: Path, endorser_pair: Issued, dev_ca: DevCa) -> None:
    doc = good_doc(endorser_pair)
    image_of(doc)["hv:size"] = "\u00b2"
    image_of(doc)["dc:title"] = "x\n\x1b]0;owned\x07"
    listed = write_signed(tmp_path / "l", doc, endorser_pair)
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "verify-list", str(listed), "--ca", str(dev_ca.ca_cert)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"{listed}: {AT}.dc:title: contains the control character '\\n'",
    ]


# ---- the next ones of the same classes -----------------------------------------------------------------


def test_an_image_named_like_the_quarantine_folder_is_not_downloaded(
    tmp_path: Path, endorser_pair: Issued, dev_ca: DevCa
) -> None:
    with hostile_server({"/img": send(200, b"image bytes")}) as (base, seen):
        entries = [make_entry(b"image bytes", base + "/img", identifier="Quarantine")]
        listed = write_signed(tmp_path / "l", make_list(endorser_of(endorser_pair), entries), endorser_pair)
        (tmp_path / "dl" / "quarantine").mkdir(parents=True)
        assert refusal(listed, dev_ca.ca_cert, download=tmp_path / "dl", allow_private_urls=True) == [
            f"image Quarantine: dc:identifier names a folder in {tmp_path / 'dl'}; not downloaded"
        ]
        assert seen == []


def test_identifiers_equal_but_for_case_are_duplicates(tmp_path: Path, endorser_pair: Issued, dev_ca: DevCa) -> None:
    entries = [
        make_entry(b"a", "https://m.example.org/a", "img-A"),
        make_entry(b"b", "https://m.example.org/b", "IMG-a"),
    ]
    listed = write_signed(tmp_path / "l", make_list(endorser_of(endorser_pair), entries), endorser_pair)
    assert refusal(listed, dev_ca.ca_cert) == ["hv:imagelist.hv:images[1]: dc:identifier IMG-a appears twice"]


def test_signer_name_with_control_characters(tmp_path: Path, dev_ca_issued: Issued, dev_ca: DevCa) -> None:
    signer = issue(dev_ca_issued, "endorser\nOK, image list", usage=SIGNING, eku=[ExtendedKeyUsageOID.EMAIL_PROTECTION])
    doc = make_list(Endorser("/CN=endorser", endorser_of(signer).ca, "e@example.org", "e"), [])
    listed = write_signed(tmp_path / "l", doc, signer)
    assert refusal(listed, dev_ca.ca_cert) == [
        "signer certificate subject contains the control character '\\n'",
        "signer '/CN=endorser\\nOK, image list' is not the list's endorser hv:dn /CN=endorser",
    ]


def trickle(h: http.server.BaseHTTPRequestHandler) -> None:
    """Announces 100 KiB, sends a byte every 0.2 s: alive for each read timeout, dead for any site."""
    h.send_response(200)
    h.send_header("Content-Length", str(100 * 1024))
    h.end_headers()
    with contextlib.suppress(OSError):
        for _ in range(100 * 1024):
            h.wfile.write(b"x")
            h.wfile.flush()
            threading.Event().wait(0.2)


def test_a_trickling_server_is_cut_off(tmp_path: Path, endorser_pair: Issued, dev_ca: DevCa) -> None:
    with hostile_server({"/img": trickle}) as (base, _):
        listed = one_image_list(tmp_path, endorser_pair, base + "/img", payload=b"x" * 100 * 1024)
        (problem,) = refusal(listed, dev_ca.ca_cert, download=tmp_path / "dl", allow_private_urls=True)
    assert problem.startswith(f"image {IMAGE_ID}: too slow: ")
    assert problem.endswith(f" of 102400 bytes in 12 s (less than 65536 bytes/s) ({base}/img)")
    assert list((tmp_path / "dl").iterdir()) == []  # the partial file went with its temporary name


@pytest.mark.parametrize("version", ["\u00b2", "1" * 5000, None, ["1"]])
def test_a_damaged_state_file_is_one_line(
    tmp_path: Path, endorser_pair: Issued, dev_ca: DevCa, version: object
) -> None:
    doc = make_list(endorser_of(endorser_pair), [], version=5)
    key = f"{doc['hv:imagelist']['dc:identifier']} {LIST_URI}"  # type: ignore[index]
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"lists": {key: {"hv:version": version, "dc:date:created": "2026-01-01T00:00:00Z"}}}))
    with pytest.raises(ConfigError) as err:
        verify_image_list(write_signed(tmp_path / "l", doc, endorser_pair), dev_ca.ca_cert, state=state)
    assert err.value.problems == [f"{state}: lists.{key}: not a version and a date; delete the entry"]


def test_quick_start_command_line_against_a_local_catalogue(
    catalogue_site: tuple[Path, str], endorser_pair: Issued, dev_ca: DevCa, tmp_path: Path
) -> None:
    """README: `invoke verify-list http://127.0.0.1:8080/vo/VO/image.list --ca CA --download DIR` needs
    --allow-private-urls when the images, too, are served on 127.0.0.1."""
    root, base = catalogue_site
    (root / "repo").mkdir()
    (root / "repo" / "img.ova").write_bytes(b"image bytes")
    uri = f"{base}/vo/vo.a.org/image.list"
    doc = make_list(endorser_of(endorser_pair), [make_entry(b"image bytes", f"{base}/repo/img.ova")], uri=uri)
    doc["hv:imagelist"]["ad:vo"] = "vo.a.org"  # type: ignore[index]
    write_signed(root / "vo" / "vo.a.org" / "image.list", doc, endorser_pair)
    cache = tmp_path / "site-cache"
    argv = [sys.executable, "-m", "invoke", "verify-list", uri, "--ca", str(dev_ca.ca_cert), "--download", str(cache)]
    refused = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"{uri}: image {IMAGE_ID}: 127.0.0.1 resolves to 127.0.0.1, a loopback address: not downloaded "
        f"(--allow-private-urls to allow) ({base}/repo/img.ova)"
    ]
    ok = subprocess.run([*argv, "--allow-private-urls"], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert f"{uri}: OK, image list" in ok.stdout and "for VO vo.a.org" in ok.stdout
    assert (cache / IMAGE_ID).read_bytes() == b"image bytes"


@pytest.mark.parametrize("where", ["outer", "content"])
def test_a_doubled_mime_header_is_ambiguous(tmp_path: Path, endorser_pair: Issued, dev_ca: DevCa, where: str) -> None:
    doc = make_list(endorser_of(endorser_pair), [])
    raw = sign_image_list(doc, endorser_pair.key_pem, endorser_pair.cert_pem)
    if where == "outer":
        doubled = b"Content-Type: text/plain\n" + raw
    else:  # signed content that carries its own, doubled, header
        content = b"Content-Type: text/plain\r\nContent-Type: application/json\r\n\r\n" + json.dumps(doc).encode()
        doubled = sign_bytes(content, endorser_pair)
    assert doubled != raw
    listed = tmp_path / "l"
    listed.write_bytes(doubled)
    assert refusal(listed, dev_ca.ca_cert) == [
        "a MIME header (Content-Type or MIME-Version) appears twice: ambiguous message"
    ]


def test_operator_paths_that_are_the_wrong_kind(tmp_path: Path, endorser_pair: Issued, dev_ca: DevCa) -> None:
    listed = write_signed(tmp_path / "l", make_list(endorser_of(endorser_pair), []), endorser_pair)
    with pytest.raises(ConfigError) as err:
        verify_image_list(listed, dev_ca.ca_cert, state=tmp_path)
    assert err.value.problems == [f"{tmp_path}: cannot read the state file: Is a directory"]
    with pytest.raises(ConfigError) as err:
        verify_image_list(listed, dev_ca.ca_cert, download=listed)
    assert err.value.problems == [f"{listed}: the download folder is a file"]


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_the_connection_guard_refuses_a_private_peer_before_sending(scheme: str) -> None:
    """Behind the name check: a host that re-resolves to a private address between our lookup and the
    connection (DNS rebinding) is caught on the socket, before the request is written."""
    from pipeline.site.verify import _Fetcher, _PrivateAddress

    fetcher = _Fetcher(allow_private=False)
    with hostile_server({"/img": send(200, b"image bytes")}) as (base, seen):
        with pytest.raises(requests.ConnectionError) as err:
            fetcher.session.get(base.replace("http", scheme, 1) + "/img", timeout=10)
        fetcher.close()
        assert seen == []
    reason = err.value.args[0].reason
    assert isinstance(reason, _PrivateAddress)
    assert reason.problem == "127.0.0.1 connected to 127.0.0.1, a loopback address"


def test_an_image_server_that_is_down_is_one_line(tmp_path: Path, endorser_pair: Issued, dev_ca: DevCa) -> None:
    with hostile_server({}) as (base, _):
        pass  # closed: its port now refuses connections
    listed = one_image_list(tmp_path, endorser_pair, base + "/img")
    (problem,) = refusal(listed, dev_ca.ca_cert, download=tmp_path / "dl", allow_private_urls=True)
    assert problem.startswith(f"image {IMAGE_ID}: cannot download: ")
    assert "Connection refused" in problem and problem.endswith(f" ({base}/img)") and "\n" not in problem


@pytest.mark.parametrize(("md", "expected"), [("sha1", "sha1 (1.3.14.3.2.26)"), ("md5", "md5 (1.2.840.113549.2.5)")])
def test_a_weak_digest_signature_is_refused(
    tmp_path: Path, endorser_pair: Issued, dev_ca: DevCa, md: str, expected: str
) -> None:
    """OpenSSL verifies SHA-1 and MD5 signatures without a word; the micalg header is unsigned, the
    signer's digestAlgorithm is what counts."""
    (tmp_path / "payload").write_text(json.dumps(make_list(endorser_of(endorser_pair), []), sort_keys=True, indent=2))
    (tmp_path / "key.pem").write_bytes(endorser_pair.key_pem)
    (tmp_path / "cert.pem").write_bytes(endorser_pair.cert_pem)
    listed = tmp_path / "l"
    sign = ["openssl", "smime", "-sign", "-md", md, "-in", "payload", "-signer", "cert.pem", "-inkey", "key.pem"]
    subprocess.run([*sign, "-out", str(listed)], cwd=tmp_path, check=True, capture_output=True)
    listed.write_bytes(listed.read_bytes().replace(f'micalg="{md}"'.encode(), b'micalg="sha-256"'))
    plain = ["openssl", "smime", "-verify", "-in", str(listed), "-CAfile", str(dev_ca.ca_cert), "-out", "/dev/null"]
    assert subprocess.run(plain, capture_output=True).returncode == 0
    assert refusal(listed, dev_ca.ca_cert) == [f"signed with {expected}: only SHA-2 digests are accepted"]


def nested_multiparts(depth: int) -> bytes:
    head, tail = b"", b""
    for n in range(depth):
        kind = b"multipart/signed" if n == 0 else b"multipart/mixed"
        head += b'Content-Type: %s; boundary="b%d"\n\n--b%d\n' % (kind, n, n)
        tail = b"\n--b%d--\n" % n + tail
    return b"MIME-Version: 1.0\n" + head + b"Content-Type: text/plain\n\nx" + tail


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (nested_multiparts(3000), "a part of the signed message is itself multipart: not an image list"),
        (
            b'MIME-Version: 1.0\nContent-Type: multipart/signed; boundary="b"\n\n'
            + b"--b\n\nx\n" * 200_000
            + b"--b--\n",
            "a signed list has exactly 2 MIME parts (content, signature), this one has 200000",
        ),
    ],
    ids=["deep", "wide"],
)
def test_mime_bombs_are_one_line(tmp_path: Path, dev_ca: DevCa, raw: bytes, expected: str) -> None:
    listed = tmp_path / "l"
    listed.write_bytes(raw)
    with bounded(seconds=5.0, memory_bytes=256 * 2**20):
        assert refusal(listed, dev_ca.ca_cert) == [expected]
