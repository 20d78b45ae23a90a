"""Verify a signed HEPiX image list the way a cloud site does (``invoke verify-list``).

One command for what vmcatcher, cloudkeeper and atrope check between them: the S/MIME signature
chains to the CA(s) given and to nothing else (no system trust store, no ``SSL_CERT_*``), one
end-entity signer, certificate in its validity window, signer == the list's ``hv:endorser`` (== the
expected DN), the list bound to where it is served (``hv:uri``, ``ad:vo``), list dates and lifetime,
``hv:version`` never going back per list identity, strict fields, and with ``download`` every
image's size and sha512, fetched over http(s) from public addresses only. State is written only
when everything holds. CMS verification is OpenSSL's (``cryptography`` signs but cannot verify
PKCS#7); only the payload OpenSSL returns as verified is parsed.
"""

from __future__ import annotations

import datetime as dt
import email
import email.errors
import email.message
import email.parser
import email.policy
import hashlib
import ipaddress
import json
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast
from urllib.parse import unquote, urljoin, urlsplit

import requests
import urllib3
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID
from requests.adapters import HTTPAdapter

from pipeline.errors import CommandError, ConfigError, PipelineError, VerificationError
from pipeline.formats.imagelist import (
    IDENTIFIER,
    LIST_VERSION,
    ImageListEntry,
    list_problems,
    load_list_json,
    openssl_dn,
    parse_date,
    text_problem,
    url_problem,
)
from pipeline.fsutil import CHUNK, atomic_path, write_text_atomic
from pipeline.log import log
from pipeline.manifest import version_sort_key
from pipeline.run import find_tool, run

MAX_LIST_BYTES = 16 * 1024 * 1024  # a list of thousands of images is far smaller; bounds a hostile server
CLOCK_SKEW = dt.timedelta(minutes=5)  # tolerated difference between the signer's clock and ours
TIMEOUT = 60.0  # seconds without progress on one connection
OPENSSL_TIMEOUT = 60.0
MAX_REDIRECTS = 5
MIN_RSA_BITS = 2048
MIN_RATE = 64 * 1024  # bytes/s on average, after GRACE seconds: a server trickling slower is cut off
GRACE = 10.0
QUARANTINE = "quarantine"
_SIGNATURE_TYPES = ("application/pkcs7-signature", "application/x-pkcs7-signature")
_REDIRECTS = (301, 302, 303, 307, 308)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix
_MULTIPART = re.compile(rb"(?im)^content-type:\s*multipart/")
_CATALOGUE_PATH = re.compile(r"/vo/([^/]+)/image\.list\Z")  # the catalogue's list URL names the VO


@dataclass(frozen=True)
class Download:
    identifier: str
    path: Path
    size: int
    fresh: bool  # downloaded now (False: the cached copy re-verified)


@dataclass(frozen=True)
class ListReport:
    """What a successful verification established."""

    source: str
    identifier: str
    version: str
    signer_dn: str
    signer_ca: str
    created: str
    expires: str
    images: tuple[ImageListEntry, ...]
    downloads: tuple[Download, ...] = ()
    warnings: tuple[str, ...] = field(default=())
    vo: str = ""  # ad:vo, the VO the signed list names ("" when it names none)
    uri: str = ""  # hv:uri, where the signed list says it is served

    def summary(self) -> str:
        lines = [
            f"{self.source}: OK, image list {self.identifier} version {self.version}"
            + (f" for VO {self.vo}" if self.vo else ""),
            f"  signed by {self.signer_dn}",
            f"  issued by {self.signer_ca}",
            f"  created {self.created}, expires {self.expires}, {len(self.images)} image(s)",
        ]
        lines += [f"  image {i.identifier}: {i.title} {i.version} ({i.size} bytes)" for i in self.images]
        for d in self.downloads:
            lines.append(f"  {'downloaded' if d.fresh else 'cached'} and verified: {d.path} ({d.size} bytes)")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def read_source(source: str, limit: int = MAX_LIST_BYTES) -> bytes:
    """The bytes at a path, ``file://`` or ``http(s)://`` URL, at most ``limit`` of them.

    The list's own location is the operator's choice (a local catalogue is fine); the image URLs
    inside it are not, see ``_Fetcher``.
    """
    deadline, parts, size = _deadline(limit), [], 0
    with _Source(source) as stream:
        read = getattr(stream, "read1", stream.read)
        try:
            while size <= limit and (chunk := read(min(CHUNK, limit + 1 - size))):
                parts.append(chunk)
                size += len(chunk)
                if time.monotonic() > deadline:
                    raise VerificationError(source, [f"too slow: less than {MIN_RATE} bytes/s; gave up"])
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as e:
            raise VerificationError(source, [f"cannot read: {_printable(str(e))}"]) from e
    data = b"".join(parts)
    if len(data) > limit:
        raise VerificationError(source, [f"larger than {limit} bytes: refusing to read it"])
    return data


class _Source:
    """A readable stream for a path, file:// or http(s):// URL (requests for the network)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._response: requests.Response | None = None
        self._file: BinaryIO | None = None

    def __enter__(self) -> BinaryIO:
        scheme = urlsplit(self.source).scheme
        try:
            if scheme in ("http", "https"):
                self._response = requests.get(self.source, stream=True, timeout=TIMEOUT, headers=_IDENTITY)
                self._response.raise_for_status()
                return _raw(self._response)
            path = Path(unquote(urlsplit(self.source).path)) if scheme == "file" else Path(self.source)
            self._file = open(path, "rb")  # noqa: SIM115 (closed in __exit__)
            return self._file
        except requests.RequestException as e:
            raise VerificationError(self.source, [f"cannot download: {e}"]) from e
        except OSError as e:
            raise VerificationError(self.source, [f"cannot read: {e.strerror}"]) from e

    def __exit__(self, *exc: object) -> None:
        if self._response is not None:
            self._response.close()
        if self._file is not None:
            self._file.close()


_IDENTITY = {"Accept-Encoding": "identity"}  # the bytes hashed are the bytes sent: no decompression bombs


def _raw(response: requests.Response) -> BinaryIO:
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise requests.RequestException(f"the server sent Content-Encoding {encoding[:40]!r}, not the file itself")
    response.raw.decode_content = False
    return cast(BinaryIO, response.raw)


# ---- image downloads: http(s) only, public addresses only (unless allowed), bounded by hv:size -----------


def address_problem(address: str) -> str | None:
    """Why a site must not fetch images from ``address`` (an IP literal), or None for a public address:
    ``"127.0.0.1, a loopback address"`` (IPv4-mapped, 6to4, Teredo and NAT64 addresses are judged as
    the IPv4 address they carry)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r}, not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):  # an IPv4 address carried in IPv6 is judged as that IPv4
        if ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        else:
            ip = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None) or ip
    for kind, hit in (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("unspecified", ip.is_unspecified),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("non-public", not ip.is_global),
    ):
        if hit:
            return f"{ip}, a {kind} address"
    return None


class _PrivateAddress(urllib3.exceptions.NewConnectionError):
    def __init__(self, conn: Any, problem: str) -> None:
        super().__init__(conn, problem)
        self.problem = problem


class _Guard:
    """Checks the address actually connected to, before a byte is sent (a name that re-resolves
    elsewhere between our lookup and the connection is caught here)."""

    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        problem = address_problem(str(sock.getpeername()[0]))
        if problem:
            sock.close()
            raise _PrivateAddress(self, f"{getattr(self, 'host', 'the host')} connected to {problem}")
        return sock


class _GuardedHTTPConnection(_Guard, urllib3.connection.HTTPConnection):
    pass


class _GuardedHTTPSConnection(_Guard, urllib3.connection.HTTPSConnection):
    pass


class _GuardedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _GuardedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}


class _Fetcher:
    """Image downloads: http(s) only, no user info, every hop of a redirect checked, and (unless
    ``allow_private``) every address the host resolves to, and the one connected to, public.

    The environment's proxies and ``~/.netrc`` are not used: a list names hosts chosen by whoever
    wrote it, and a site's credentials are not theirs to collect.
    """

    def __init__(self, allow_private: bool) -> None:
        self.allow_private = allow_private
        self.session = requests.Session()
        self.session.trust_env = False
        if not allow_private:
            self.session.mount("http://", _GuardedAdapter())
            self.session.mount("https://", _GuardedAdapter())

    def close(self) -> None:
        self.session.close()

    def _hop_problem(self, url: str) -> str | None:
        if problem := url_problem(url):
            return problem
        if self.allow_private:
            return None
        parts = urlsplit(url)
        host = parts.hostname or ""
        try:
            infos = socket.getaddrinfo(host, parts.port or 80, type=socket.SOCK_STREAM)  # port: irrelevant here
        except (OSError, UnicodeError) as e:
            return f"cannot resolve {host}: {getattr(e, 'strerror', None) or e}"
        for info in infos:
            if problem := address_problem(str(info[4][0])):
                return f"{host} resolves to {problem}: not downloaded (--allow-private-urls to allow)"
        return None

    def open(self, url: str, expected_size: int) -> requests.Response:
        """The response whose body is the image; ``_Rejected`` with one line otherwise."""
        for _ in range(MAX_REDIRECTS + 1):
            if problem := self._hop_problem(url):
                raise _Rejected(problem)
            try:
                response = self.session.get(url, stream=True, timeout=TIMEOUT, allow_redirects=False, headers=_IDENTITY)
            except requests.ConnectionError as e:
                reason = getattr(e.args[0], "reason", None) if e.args else None
                if isinstance(reason, _PrivateAddress):
                    raise _Rejected(f"{reason.problem}: not downloaded (--allow-private-urls to allow)") from e
                raise _Rejected(f"cannot download: {_printable(str(reason or e), 200)}") from e
            except requests.RequestException as e:
                raise _Rejected(f"cannot download: {_printable(str(e), 200)}") from e
            if response.status_code in _REDIRECTS:
                location = response.headers.get("Location", "")
                response.close()
                url = urljoin(url, location)
                continue
            if response.status_code != 200:
                response.close()
                raise _Rejected(f"cannot download: HTTP {response.status_code}")
            length = response.headers.get("Content-Length", "")
            if length.isascii() and length.isdigit() and len(length) < 20 and int(length) > expected_size:
                response.close()
                raise _Rejected(f"size mismatch: hv:size is {expected_size}, the server announces {int(length)} bytes")
            return response
        raise _Rejected(f"more than {MAX_REDIRECTS} redirects")


def split_smime(raw: bytes) -> tuple[bytes | None, list[str]]:
    """The DER signature of a multipart/signed message, or the problems that make it unsigned.

    The top-level headers are read first: anything but multipart/signed, or a body with more
    delimiters than two parts need, is refused before the full (recursive, per-part) MIME parse.
    """
    try:
        top = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
        boundary = top.get_boundary() if top.get_content_type() == "multipart/signed" else None
    except (ValueError, TypeError, LookupError, email.errors.MessageError) as e:
        return None, [f"not a MIME message: {type(e).__name__}"]
    if boundary is not None:
        delimiters = raw.count(b"\n--" + boundary.encode("utf-8", "surrogateescape"))
        if delimiters > 3:  # two part delimiters and the closing one
            return None, [f"a signed list has exactly 2 MIME parts (content, signature), this one has {delimiters - 1}"]
        if len(_MULTIPART.findall(raw, 0, MAX_LIST_BYTES + 1)) > 1:  # neither the list nor its signature is one
            return None, ["a part of the signed message is itself multipart: not an image list"]
    try:
        message = email.message_from_bytes(raw, policy=email.policy.compat32)
        content_type = message.get_content_type()
        parts = message.get_payload()
        epilogue = message.epilogue
        headers = [len(message.get_all(name) or []) for name in ("Content-Type", "MIME-Version")]
        if isinstance(parts, list) and parts and isinstance(parts[0], email.message.Message):
            headers.append(len(parts[0].get_all("Content-Type") or []))
    except RecursionError:
        return None, ["MIME parts nested too deeply"]
    except (ValueError, TypeError, LookupError, email.errors.MessageError) as e:
        return None, [f"not a MIME message: {type(e).__name__}"]
    if max(headers) > 1:  # MIME parsers disagree on which one counts: the meaning is ambiguous
        return None, ["a MIME header (Content-Type or MIME-Version) appears twice: ambiguous message"]
    if content_type != "multipart/signed":
        return None, [f"not S/MIME signed: Content-Type is {_printable(content_type)}, not multipart/signed"]
    if not isinstance(parts, list) or len(parts) != 2:
        count = len(parts) if isinstance(parts, list) else 0
        return None, [f"a signed list has exactly 2 MIME parts (content, signature), this one has {count}"]
    problems = []
    if (epilogue or "").strip():
        problems.append("data after the end of the signed message (refusing unsigned trailing content)")
    signature = parts[1]
    if not isinstance(signature, email.message.Message):
        return None, ["the second MIME part is not a MIME part: signature stripped"]
    try:
        signature_type = signature.get_content_type()
        der = signature.get_payload(decode=True)
    except (ValueError, TypeError, LookupError, email.errors.MessageError) as e:
        return None, [f"the signature part cannot be decoded: {type(e).__name__}"]
    if signature_type not in _SIGNATURE_TYPES:
        return None, [f"second MIME part is {_printable(signature_type)}, not a PKCS#7 signature: signature stripped"]
    if not isinstance(der, bytes) or not der:
        return None, ["the signature part is empty: signature stripped"]
    return der, problems


def _printable(text: str, limit: int = 100) -> str:
    """Text from outside (a header, an error naming a URL) fit for one line of a report."""
    return text.encode("ascii", "backslashreplace").decode()[:limit] if text.isprintable() else repr(text)[:limit]


def smime_verify_argv(message: Path, ca: Path, signers: Path, payload: Path) -> list[str]:
    """``openssl smime -verify`` trusting ``ca`` (a PEM file, or a hashed directory) and nothing else.

    Without ``-no-CAfile -no-CApath -no-CAstore`` OpenSSL also loads its default store (the system's
    public CAs, or wherever ``SSL_CERT_FILE``/``SSL_CERT_DIR`` point) next to ``-CAfile``.
    ``-purpose smimesign`` is OpenSSL's default for S/MIME, spelled out.
    """
    trust = ["-CApath", str(ca)] if ca.is_dir() else ["-CAfile", str(ca)]
    return [
        find_tool("openssl"), "smime", "-verify", "-in", str(message),
        "-no-CAfile", "-no-CApath", "-no-CAstore", *trust, "-purpose", "smimesign",
        "-signer", str(signers), "-out", str(payload),
    ]  # fmt: skip


def _openssl_verify(raw: bytes, ca: Path, work: Path) -> tuple[bytes | None, list[x509.Certificate], list[str]]:
    """OpenSSL's verdict: (verified payload, signer certificates, problems)."""
    message, signers, payload = work / "list.smime", work / "signers.pem", work / "payload"
    message.write_bytes(raw)
    try:  # run() hands OpenSSL a scrubbed environment: no SSL_CERT_*, no OPENSSL_CONF
        result = run(smime_verify_argv(message, ca, signers, payload), check=False, timeout=OPENSSL_TIMEOUT)
    except CommandError:
        return None, [], [f"S/MIME verification did not finish within {OPENSSL_TIMEOUT:.0f} s"]
    try:
        certs = (
            x509.load_pem_x509_certificates(signers.read_bytes()) if signers.exists() and signers.stat().st_size else []
        )
    except ValueError:
        certs = []
    if result.returncode != 0:
        reasons = [_openssl_reason(line) for line in result.stderr.splitlines() if "error" in line.lower()]
        shown = "; ".join(dict.fromkeys(r for r in reasons if r)) or f"openssl exit code {result.returncode}"
        return None, certs, [f"S/MIME signature does not verify against {ca}: {shown}"]
    problems = _digest_problems(message)
    return (None if problems else payload.read_bytes()), certs, problems


# SHA-2 only: OpenSSL verifies MD5 and SHA-1 signatures as readily (chosen-prefix collisions are practical)
_STRONG_DIGESTS = {
    "2.16.840.1.101.3.4.2.4": "SHA-224",
    "2.16.840.1.101.3.4.2.1": "SHA-256",
    "2.16.840.1.101.3.4.2.2": "SHA-384",
    "2.16.840.1.101.3.4.2.3": "SHA-512",
}
_ALGORITHM = re.compile(r"^\s*algorithm: (\S+) \(([0-9.]+)\)\s*$")


def _digest_problems(message: Path) -> list[str]:
    """Each signer's ``digestAlgorithm`` (the signed one, not the ``micalg`` header) must be SHA-2."""
    argv = [find_tool("openssl"), "cms", "-cmsout", "-print", "-noout", "-in", str(message)]
    try:
        result = run(argv, check=False, timeout=OPENSSL_TIMEOUT)
    except CommandError:
        return [f"reading the signature's digest algorithm did not finish within {OPENSSL_TIMEOUT:.0f} s"]
    lines = result.stdout.splitlines()
    found = [_ALGORITHM.match(lines[n + 1]) for n, line in enumerate(lines[:-1]) if line.strip() == "digestAlgorithm:"]
    if result.returncode != 0 or not found or None in found:
        return ["cannot read the signature's digest algorithm"]
    used = dict.fromkeys((m[1], m[2]) for m in found if m is not None)
    return [
        f"signed with {name} ({oid}): only SHA-2 digests are accepted"
        for name, oid in used
        if oid not in _STRONG_DIGESTS
    ]


def _openssl_reason(line: str) -> str:
    """The human part of an OpenSSL error line (``PID:error:CODE:LIB:FUNC:REASON:FILE:LINE:``)."""
    if "Verify error:" in line:
        return line.split("Verify error:", 1)[1].strip()
    parts = line.split(":")
    return parts[5].strip() if len(parts) > 5 and parts[1] == "error" else line.strip()


def _embedded_certificates(der: bytes) -> list[x509.Certificate]:
    try:
        return pkcs7.load_der_pkcs7_certificates(der)
    except ValueError:
        return []


def _signer_problems(certs: list[x509.Certificate], now: dt.datetime) -> list[str]:
    """One end-entity signer, in its validity window, whose key may sign S/MIME (clear reasons for what
    OpenSSL's purpose check also refuses)."""
    if len(certs) != 1:
        return [f"exactly one signer expected, the signature has {len(certs)}"]
    cert = certs[0]
    if now < cert.not_valid_before_utc:
        return [f"signer certificate not yet valid (valid from {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ})"]
    if now > cert.not_valid_after_utc:
        return [f"signer certificate expired on {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"]
    problems = []
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        problems.append(f"signer key is RSA-{key.key_size}: at least RSA-{MIN_RSA_BITS} (IGTF's minimum) is required")
    elif isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size < 256:
        problems.append(f"signer key is a {key.curve.key_size}-bit EC key: at least 256 bits are required")
    try:
        extensions = cert.extensions
    except ValueError as e:
        return [f"signer certificate has a malformed extension: {e}"]
    for ext in extensions:
        if isinstance(ext.value, x509.BasicConstraints) and ext.value.ca:
            problems.append("signer certificate is a CA certificate (basicConstraints CA:TRUE), not an endorser's")
        elif isinstance(ext.value, x509.KeyUsage) and not (ext.value.digital_signature or ext.value.content_commitment):
            problems.append("signer certificate's keyUsage allows neither digitalSignature nor nonRepudiation")
        elif isinstance(ext.value, x509.ExtendedKeyUsage) and not {
            ExtendedKeyUsageOID.EMAIL_PROTECTION,
            ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
        } & set(ext.value):
            problems.append("signer certificate's extendedKeyUsage does not include emailProtection (S/MIME)")
    return problems


def read_list_payload(
    payload: bytes, now: dt.datetime
) -> tuple[dict[str, Any] | None, list[ImageListEntry], list[str]]:
    """The verified payload as (``hv:imagelist`` body, images, problems); the body is None when the
    list-level fields are unfit (then every later check would be guessing). Never raises on any input."""
    body, problems = _payload_json(payload)
    if body is None or problems:
        return None, [], problems
    entries, image_problems = _images(body)
    return body, entries, _date_problems(body, now) + image_problems


def _payload_json(payload: bytes) -> tuple[dict[str, Any] | None, list[str]]:
    text = payload.replace(b"\r\n", b"\n")
    if text.lower().startswith(b"content-type:"):  # signed with -text: drop the part's own header
        text = text.split(b"\n\n", 1)[1] if b"\n\n" in text else b""
    doc, problems = load_list_json(text)
    if problems:
        return None, problems
    body = doc.get("hv:imagelist") if isinstance(doc, dict) else None
    if not isinstance(body, dict):
        return None, ["signed payload has no 'hv:imagelist' object: not a HEPiX image list"]
    return body, list_problems(body)


def _date_problems(body: dict[str, Any], now: dt.datetime) -> list[str]:
    """Fresh and unexpired (shapes, order and lifetime: ``list_problems``)."""
    problems = []
    created, expires = parse_date(body["dc:date:created"]), parse_date(body["dc:date:expires"])
    if created > now + CLOCK_SKEW:
        problems.append(f"list created in the future ({body['dc:date:created']}, now {now:%Y-%m-%dT%H:%M:%SZ})")
    if now > expires:
        problems.append(f"list expired on {body['dc:date:expires']}")
    return problems


def _same_url(a: str, b: str) -> bool:
    """Equal as URLs: scheme and host case-insensitive, default port implied; path and query exact."""

    def key(url: str) -> tuple[str, str, int | None, str, str]:
        parts = urlsplit(url)
        default = {"http": 80, "https": 443}.get(parts.scheme.lower())
        return parts.scheme.lower(), (parts.hostname or ""), parts.port or default, parts.path or "/", parts.query

    try:
        return key(a) == key(b)
    except ValueError:
        return False


def _binding_problems(body: dict[str, Any], source: str, vo: str | None) -> list[str]:
    """The signed list names where it is served (``hv:uri``) and its VO (``ad:vo``): a list fetched
    from one VO's URL that is another VO's list is refused, so its state never touches the other's."""
    problems = []
    uri, listed_vo = body["hv:uri"], body.get("ad:vo")
    if urlsplit(source).scheme in ("http", "https") and not _same_url(uri, source):
        problems.append(f"the signed list is for {uri} (hv:uri), not {source} where it was served: another list")
    path_vo = _CATALOGUE_PATH.search(urlsplit(uri).path)
    if path_vo and listed_vo is not None and unquote(path_vo[1]) != listed_vo:
        problems.append(f"hv:imagelist.ad:vo {listed_vo} is not the VO its hv:uri {uri} names")
    if vo is not None and listed_vo != vo:
        problems.append(f"the signed list is for VO {listed_vo or '(none named)'}, expected VO {vo}")
    return problems


def state_key(identifier: str, uri: str) -> str:
    """A list's identity in ``--state``: its ``dc:identifier`` and its ``hv:uri`` (where it is served)."""
    return f"{identifier} {uri}"


def _load_state(state: Path | None) -> dict[str, Any]:
    if state is None or not state.exists():
        return {"sources": {}, "lists": {}}
    try:
        data = json.loads(state.read_text())
    except OSError as e:
        raise ConfigError(f"{state}: cannot read the state file: {e.strerror}") from e
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as e:
        raise ConfigError(f"{state}: not valid JSON ({e}); delete it to start afresh") from e
    sources, lists = (data.get("sources", {}), data.get("lists", {})) if isinstance(data, dict) else (None, None)
    if not isinstance(sources, dict) or not isinstance(lists, dict):
        raise ConfigError(
            f"{state}: expected a JSON object with 'sources' and 'lists' objects; delete it to start afresh"
        )
    kept: dict[str, Any] = {}
    for key, seen in lists.items():
        if not isinstance(seen, dict):
            continue
        version, created = seen.get("hv:version"), seen.get("dc:date:created")
        if not (isinstance(version, str) and LIST_VERSION.match(version) and isinstance(created, str)):
            raise ConfigError(f"{state}: lists.{_printable(key)}: not a version and a date; delete the entry")
        if " " not in key and isinstance(seen.get("hv:uri"), str):  # before per-URL identities: keyed by id only
            key = state_key(key, seen["hv:uri"])
        kept[key] = seen
    return {"sources": {k: v for k, v in sources.items() if isinstance(v, str)}, "lists": kept}


def _history_problems(body: dict[str, Any], source: str, seen: dict[str, Any], identifier: str | None) -> list[str]:
    """Rollback (per list identity) and substitution (per source, and the pinned id)."""
    problems = []
    list_id = body["dc:identifier"]
    if identifier is not None and list_id != identifier:
        problems.append(f"hv:imagelist.dc:identifier is {list_id}, expected {identifier}: a different list")
    before = seen["sources"].get(source)
    if before is not None and before != list_id:
        problems.append(f"hv:imagelist.dc:identifier is {list_id}, but {source} served list {before} before")
    last = seen["lists"].get(state_key(list_id, body["hv:uri"]))
    if isinstance(last, dict):
        version, created = str(body["hv:version"]), body["dc:date:created"]
        if version_sort_key(version) < version_sort_key(last["hv:version"]):  # both LIST_VERSION: ASCII digits
            problems.append(f"hv:version {version} is lower than {last.get('hv:version')} seen before: rolled back")
        elif created < str(last.get("dc:date:created")):
            problems.append(
                f"dc:date:created {created} is older than {last.get('dc:date:created')} seen before: replayed"
            )
    return problems


def _images(body: dict[str, Any]) -> tuple[list[ImageListEntry], list[str]]:
    entries, problems, ids = [], [], set()
    for n, item in enumerate(body["hv:images"]):
        try:
            entry = ImageListEntry.from_hepix(item, f"hv:imagelist.hv:images[{n}]")
        except ConfigError as e:
            problems += e.problems
            continue
        if entry.identifier.lower() in ids:  # one file name per image, on case-insensitive disks too
            problems.append(f"hv:imagelist.hv:images[{n}]: dc:identifier {entry.identifier} appears twice")
        ids.add(entry.identifier.lower())
        entries.append(entry)
    return entries, problems


def _fetch_image(entry: ImageListEntry, folder: Path, fetcher: _Fetcher) -> tuple[Download | None, str | None]:
    """Download (or re-check the cached copy of) one image: size bound first, then sha512 while streaming.

    A file that fails lands in ``folder/quarantine/``, never at its final name.
    """
    if not IDENTIFIER.match(entry.identifier):  # from_hepix checked it; the file name depends on it
        return None, f"image {entry.identifier!r}: dc:identifier is not a safe file name; not downloaded"
    final = folder / entry.identifier
    quarantine = folder / QUARANTINE
    if entry.identifier.lower() == QUARANTINE or final.is_dir():
        return None, f"image {entry.identifier}: dc:identifier names a folder in {folder}; not downloaded"
    if final.exists():
        with open(final, "rb") as f:
            size, digest = _copy_hashing(f, None, entry.size)
        if size == entry.size and digest == entry.sha512:
            return Download(entry.identifier, final, size, fresh=False), None
        quarantine.mkdir(parents=True, exist_ok=True)
        shutil.move(final, quarantine / f"{entry.identifier}.cached")
        log.warning("%s: cached copy no longer matches the list; quarantined and downloading again", final)
    try:
        response = fetcher.open(entry.uri, entry.size)
    except _Rejected as e:
        return None, f"image {entry.identifier}: {e} ({entry.uri})"
    try:
        with atomic_path(final) as tmp:
            with open(tmp, "wb") as out:
                size, digest = _copy_hashing(_raw(response), out, entry.size, deadline=_deadline(entry.size))
            problem = None
            if size != entry.size:
                got = f"more than {entry.size}" if size > entry.size else f"only {size}"
                problem = f"image {entry.identifier}: size mismatch: hv:size is {entry.size}, got {got} bytes"
            elif digest != entry.sha512:
                problem = f"image {entry.identifier}: sha512 mismatch: expected {entry.sha512}, got {digest}"
            if problem is not None:
                quarantine.mkdir(parents=True, exist_ok=True)
                shutil.move(tmp, quarantine / entry.identifier)
                raise _Rejected(problem)
    except _TooSlow as e:  # nothing kept: the partial file is gone with its temporary name
        return None, f"image {entry.identifier}: {e} ({entry.uri})"
    except _Rejected as e:
        return None, f"{e} (quarantined in {quarantine})"
    except (requests.RequestException, urllib3.exceptions.HTTPError) as e:
        return None, f"image {entry.identifier}: download failed: {_printable(str(e))} ({entry.uri})"
    finally:
        response.close()
    return Download(entry.identifier, final, size, fresh=True), None


class _Rejected(PipelineError):
    pass


class _TooSlow(_Rejected):
    pass


def _deadline(size: int) -> float:
    return time.monotonic() + GRACE + size / MIN_RATE


def _copy_hashing(
    stream: BinaryIO, out: BinaryIO | None, expected_size: int, deadline: float | None = None
) -> tuple[int, str]:
    """Copy and sha512-hash; read at most one byte past ``expected_size`` (never fill the disk for a liar),
    and (with ``deadline``) give up on a server slower than ``MIN_RATE`` on average."""
    sha512, size = hashlib.sha512(), 0
    read = getattr(stream, "read1", stream.read)  # what has arrived, not a full chunk: the deadline holds
    while size <= expected_size and (chunk := read(min(CHUNK, expected_size + 1 - size))):
        sha512.update(chunk)
        size += len(chunk)
        if out is not None:
            out.write(chunk)
        if deadline is not None and time.monotonic() > deadline:
            raise _TooSlow(
                f"too slow: {size} of {expected_size} bytes in {GRACE + expected_size / MIN_RATE:.0f} s "
                f"(less than {MIN_RATE} bytes/s)"
            )
    return size, sha512.hexdigest()


def verify_image_list(
    source: str | Path,
    ca: Path,
    endorser_dn: str | None = None,
    download: Path | None = None,
    state: Path | None = None,
    *,
    identifier: str | None = None,
    vo: str | None = None,
    allow_private_urls: bool = False,
) -> ListReport:
    """Check a signed image list as a site does; ``VerificationError`` lists every problem, one per line.

    ``ca`` is the only trust anchor. ``state`` (JSON) remembers which list each source served and,
    per list identity (``dc:identifier`` + ``hv:uri``), the last ``hv:version`` and ``dc:date:created``
    accepted; it changes only when every check (downloads included) passed. ``vo`` pins ``ad:vo``.
    Image downloads refuse loopback, link-local and private addresses unless ``allow_private_urls``.
    """
    source = str(source)
    if not ca.exists():
        raise ConfigError(f"{ca}: CA certificate file (or directory) not found", hint="pass the CA that sites trust")
    if download is not None and download.exists() and not download.is_dir():
        raise ConfigError(f"{download}: the download folder is a file")
    now = dt.datetime.now(dt.UTC)
    raw = read_source(source)
    der, problems = split_smime(raw)
    if der is None:
        raise VerificationError(source, problems)
    with tempfile.TemporaryDirectory(prefix="vmi-verify-") as work:
        payload, certs, sig_problems = _openssl_verify(raw, ca, Path(work))
    if payload is None and not certs:  # OpenSSL names no signer when it fails: look at the embedded certificate
        embedded = _embedded_certificates(der)
        problems += sig_problems + (_signer_problems(embedded, now) if len(embedded) == 1 else [])
    else:
        problems += sig_problems + _signer_problems(certs, now)
    if payload is None:
        raise VerificationError(source, problems)
    body, entries, payload_problems = read_list_payload(payload, now)
    if body is None:
        raise VerificationError(source, problems + payload_problems)
    signer_dn = openssl_dn(certs[0].subject) if len(certs) == 1 else ""
    signer_ca = openssl_dn(certs[0].issuer) if len(certs) == 1 else ""
    for what, dn in (("subject", signer_dn), ("issuer", signer_ca)):
        if problem := text_problem(dn):  # it is printed and compared: no control characters from a certificate
            problems.append(f"signer certificate {what} {problem}")
            signer_dn, signer_ca = _printable(signer_dn), _printable(signer_ca)
    listed = body["hv:endorser"]["hv:x509"]
    if listed["hv:dn"] != signer_dn:  # one endorser per list, even when the site pins no DN
        problems.append(f"signer {signer_dn or '(none)'} is not the list's endorser hv:dn {listed['hv:dn']}")
    if listed["hv:ca"] != signer_ca:
        problems.append(f"signer's CA {signer_ca or '(none)'} is not the list's endorser hv:ca {listed['hv:ca']}")
    if endorser_dn is not None and signer_dn != endorser_dn:
        problems.append(f"signed by {signer_dn or 'nobody'}, expected endorser {endorser_dn}")
    binding = _binding_problems(body, source, vo)
    seen = _load_state(state)  # another list than the one asked for (binding) has no history here to compare:
    problems += binding or _history_problems(body, source, seen, identifier)  # one line says why
    problems += payload_problems
    warnings = []
    if urlsplit(source).scheme not in ("http", "https"):
        warnings.append(f"read from a file: not checked that it is served at its hv:uri {body['hv:uri']}")
    key = state_key(body["dc:identifier"], body["hv:uri"])
    last = seen["lists"].get(key)
    if isinstance(last, dict) and str(last.get("hv:version")) == str(body["hv:version"]):
        warnings.append(f"hv:version {body['hv:version']} is the one seen before (no new list)")
    for entry in entries:
        if entry.expires is not None and parse_date(entry.expires) < now:
            warnings.append(f"image {entry.identifier}: expired on {entry.expires} (dc:date:expires)")
    if problems:
        raise VerificationError(source, problems)
    downloads = []
    if download is not None:
        download.mkdir(parents=True, exist_ok=True)
        fetcher = _Fetcher(allow_private_urls)
        try:
            for entry in entries:
                done, problem = _fetch_image(entry, download, fetcher)
                if problem:
                    problems.append(problem)
                elif done:
                    downloads.append(done)
        finally:
            fetcher.close()
        if problems:
            raise VerificationError(source, problems)
    if state is not None:
        seen["sources"][source] = body["dc:identifier"]
        seen["lists"][key] = {k: body[k] for k in ("dc:identifier", "hv:version", "dc:date:created", "hv:uri")}
        write_text_atomic(state, json.dumps(seen, indent=2, sort_keys=True) + "\n")
    return ListReport(
        source,
        body["dc:identifier"],
        str(body["hv:version"]),
        signer_dn,
        signer_ca,
        body["dc:date:created"],
        body["dc:date:expires"],
        tuple(entries),
        tuple(downloads),
        tuple(warnings),
        vo=body.get("ad:vo") or "",
        uri=body["hv:uri"],
    )
