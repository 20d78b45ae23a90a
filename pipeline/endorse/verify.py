"""Verify a signed HEPiX image list the way a cloud site does (``invoke verify-list``).

One command for what vmcatcher, cloudkeeper and atrope check between them: the S/MIME signature
chains to the trusted CA, one signer, certificate in its validity window, signer == the list's
``hv:endorser`` (== the expected DN), list dates, ``hv:version`` never going back, the list's
identity, and with ``download`` every image's size and sha512. State is written only when
everything holds. CMS verification is OpenSSL's (``cryptography`` signs but cannot verify PKCS#7);
only the payload OpenSSL returns as verified is parsed.
"""

from __future__ import annotations

import datetime as dt
import email
import email.message
import email.policy
import hashlib
import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast
from urllib.parse import unquote, urlparse

import requests
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs7

from pipeline.endorse.imagelist import (
    ENDORSER_REQUIRED,
    LIST_REQUIRED,
    ImageListEntry,
    openssl_dn,
    parse_date,
)
from pipeline.errors import ConfigError, PipelineError, VerificationError
from pipeline.fsutil import CHUNK, atomic_path, write_text_atomic
from pipeline.log import log
from pipeline.manifest import version_sort_key
from pipeline.run import find_tool, run

MAX_LIST_BYTES = 16 * 1024 * 1024  # a list of thousands of images is far smaller; bounds a hostile server
CLOCK_SKEW = dt.timedelta(minutes=5)  # tolerated difference between the signer's clock and ours
TIMEOUT = 60.0
QUARANTINE = "quarantine"
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SIGNATURE_TYPES = ("application/pkcs7-signature", "application/x-pkcs7-signature")


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

    def summary(self) -> str:
        lines = [
            f"{self.source}: OK, image list {self.identifier} version {self.version}",
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
    """The bytes at a path, ``file://`` or ``http(s)://`` URL, at most ``limit`` of them."""
    with _Source(source) as stream:
        data = stream.read(limit + 1)
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
        scheme = urlparse(self.source).scheme
        try:
            if scheme in ("http", "https"):
                self._response = requests.get(self.source, stream=True, timeout=TIMEOUT)
                self._response.raise_for_status()
                self._response.raw.decode_content = True
                return cast(BinaryIO, self._response.raw)
            path = Path(unquote(urlparse(self.source).path)) if scheme == "file" else Path(self.source)
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


def _split_smime(raw: bytes) -> tuple[bytes | None, list[str]]:
    """The DER signature of a multipart/signed message, or the problems that make it unsigned."""
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    if message.get_content_type() != "multipart/signed":
        return None, [f"not S/MIME signed: Content-Type is {message.get_content_type()}, not multipart/signed"]
    parts = message.get_payload()
    if not isinstance(parts, list) or len(parts) != 2:
        count = len(parts) if isinstance(parts, list) else 0
        return None, [f"a signed list has exactly 2 MIME parts (content, signature), this one has {count}"]
    problems = []
    if (message.epilogue or "").strip():
        problems.append("data after the end of the signed message (refusing unsigned trailing content)")
    signature = parts[1]
    assert isinstance(signature, email.message.Message)
    if signature.get_content_type() not in _SIGNATURE_TYPES:
        return None, [f"second MIME part is {signature.get_content_type()}, not a PKCS#7 signature: signature stripped"]
    der = signature.get_payload(decode=True)
    if not isinstance(der, bytes) or not der:
        return None, ["the signature part is empty: signature stripped"]
    return der, problems


def _openssl_verify(raw: bytes, ca: Path, work: Path) -> tuple[bytes | None, list[x509.Certificate], list[str]]:
    """OpenSSL's verdict: (verified payload, signer certificates, problems)."""
    message, signers, payload = work / "list.smime", work / "signers.pem", work / "payload"
    message.write_bytes(raw)
    trust = ["-CApath", str(ca)] if ca.is_dir() else ["-CAfile", str(ca)]
    argv = [find_tool("openssl"), "smime", "-verify", "-in", str(message), *trust]
    result = run([*argv, "-signer", str(signers), "-out", str(payload)], check=False)
    certs = x509.load_pem_x509_certificates(signers.read_bytes()) if signers.exists() and signers.stat().st_size else []
    if result.returncode != 0:
        reasons = [_openssl_reason(line) for line in result.stderr.splitlines() if "error" in line.lower()]
        shown = "; ".join(dict.fromkeys(r for r in reasons if r)) or f"openssl exit code {result.returncode}"
        return None, certs, [f"S/MIME signature does not verify against {ca}: {shown}"]
    return payload.read_bytes(), certs, []


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
    if len(certs) != 1:
        return [f"exactly one signer expected, the signature has {len(certs)}"]
    cert = certs[0]
    if now < cert.not_valid_before_utc:
        return [f"signer certificate not yet valid (valid from {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ})"]
    if now > cert.not_valid_after_utc:
        return [f"signer certificate expired on {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"]
    return []


def _payload_json(payload: bytes) -> tuple[dict[str, Any] | None, list[str]]:
    text = payload.replace(b"\r\n", b"\n")
    if text.lower().startswith(b"content-type:"):  # signed with -text: drop the part's own header
        text = text.split(b"\n\n", 1)[1] if b"\n\n" in text else b""
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return None, [f"signed payload is not JSON: {e}"]
    body = doc.get("hv:imagelist") if isinstance(doc, dict) else None
    if not isinstance(body, dict):
        return None, ["signed payload has no 'hv:imagelist' object: not a HEPiX image list"]
    problems = [f"hv:imagelist.{k}: is required" for k in LIST_REQUIRED if k not in body]
    endorser = body.get("hv:endorser", {})
    x509_part = endorser.get("hv:x509") if isinstance(endorser, dict) else None
    if not isinstance(x509_part, dict):
        problems.append("hv:imagelist.hv:endorser.hv:x509: is required")
    else:
        problems += [
            f"hv:imagelist.hv:endorser.hv:x509.{k}: is required" for k in ENDORSER_REQUIRED if k not in x509_part
        ]
    return body, problems


def _date_problems(body: dict[str, Any], now: dt.datetime) -> list[str]:
    problems = []
    dates: dict[str, dt.datetime] = {}
    for key in ("dc:date:created", "dc:date:expires"):
        try:
            dates[key] = parse_date(str(body.get(key)))
        except ValueError:
            problems.append(f"hv:imagelist.{key}: {body.get(key)!r} is not a %Y-%m-%dT%H:%M:%SZ date")
    created, expires = dates.get("dc:date:created"), dates.get("dc:date:expires")
    if created is not None and created > now + CLOCK_SKEW:
        problems.append(f"list created in the future ({body['dc:date:created']}, now {now:%Y-%m-%dT%H:%M:%SZ})")
    if expires is not None and now > expires:
        problems.append(f"list expired on {body['dc:date:expires']}")
    return problems


def _load_state(state: Path | None) -> dict[str, Any]:
    if state is None or not state.exists():
        return {"sources": {}, "lists": {}}
    try:
        data = json.loads(state.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{state}: not valid JSON ({e.msg}); delete it to start afresh") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{state}: expected a JSON object of lists seen")
    data.setdefault("sources", {})
    data.setdefault("lists", {})
    return data


def _history_problems(body: dict[str, Any], source: str, seen: dict[str, Any], identifier: str | None) -> list[str]:
    """Rollback (per list ``dc:identifier``, from any source) and substitution (per source, and the pinned id)."""
    problems = []
    list_id = str(body.get("dc:identifier"))
    if identifier is not None and list_id != identifier:
        problems.append(f"hv:imagelist.dc:identifier is {list_id}, expected {identifier}: a different list")
    before = seen.get("sources", {}).get(source)
    if before is not None and before != list_id:
        problems.append(f"hv:imagelist.dc:identifier is {list_id}, but {source} served list {before} before")
    last = seen.get("lists", {}).get(list_id)
    if isinstance(last, dict):
        if version_sort_key(str(body.get("hv:version"))) < version_sort_key(str(last.get("hv:version"))):
            problems.append(
                f"hv:version {body.get('hv:version')} is lower than {last.get('hv:version')} seen before: rolled back"
            )
        elif str(body.get("dc:date:created")) < str(last.get("dc:date:created")):
            problems.append(
                f"dc:date:created {body.get('dc:date:created')} is older than {last.get('dc:date:created')} "
                "seen before: replayed"
            )
    return problems


def _images(body: dict[str, Any]) -> tuple[list[ImageListEntry], list[str]]:
    items = body.get("hv:images", [])
    if not isinstance(items, list):
        return [], ["hv:imagelist.hv:images: is not a list"]
    entries, problems, ids = [], [], set()
    for n, item in enumerate(items):
        try:
            entry = ImageListEntry.from_hepix(item, f"hv:imagelist.hv:images[{n}]")
        except ConfigError as e:
            problems += e.problems
            continue
        if entry.identifier in ids:
            problems.append(f"hv:imagelist.hv:images[{n}]: dc:identifier {entry.identifier} appears twice")
        ids.add(entry.identifier)
        entries.append(entry)
    return entries, problems


def _fetch_image(entry: ImageListEntry, folder: Path) -> tuple[Download | None, str | None]:
    """Download (or re-check the cached copy of) one image: size bound first, then sha512 while streaming.

    A file that fails lands in ``folder/quarantine/``, never at its final name.
    """
    if not _SAFE_ID.match(entry.identifier):
        return None, f"image {entry.identifier!r}: dc:identifier is not a safe file name; not downloaded"
    if urlparse(entry.uri).scheme not in ("http", "https", "file"):
        return None, f"image {entry.identifier}: hv:uri {entry.uri!r} is not an http(s):// or file:// URL"
    final = folder / entry.identifier
    quarantine = folder / QUARANTINE
    if final.exists():
        with open(final, "rb") as f:
            size, digest = _copy_hashing(f, None, entry.size)
        if size == entry.size and digest == entry.sha512:
            return Download(entry.identifier, final, size, fresh=False), None
        quarantine.mkdir(parents=True, exist_ok=True)
        shutil.move(final, quarantine / f"{entry.identifier}.cached")
        log.warning("%s: cached copy no longer matches the list; quarantined and downloading again", final)
    try:
        with atomic_path(final) as tmp:
            with _Source(entry.uri) as stream, open(tmp, "wb") as out:
                size, digest = _copy_hashing(stream, out, entry.size)
            problem = None
            if size != entry.size:
                more = "more than" if size > entry.size else "only"
                problem = f"image {entry.identifier}: size mismatch: hv:size is {entry.size}, got {more} {size} bytes"
            elif digest != entry.sha512:
                problem = f"image {entry.identifier}: sha512 mismatch: expected {entry.sha512}, got {digest}"
            if problem is not None:
                quarantine.mkdir(parents=True, exist_ok=True)
                shutil.move(tmp, quarantine / entry.identifier)
                raise _Rejected(problem)
    except _Rejected as e:
        return None, f"{e} (quarantined in {quarantine})"
    except VerificationError as e:
        return None, f"image {entry.identifier}: {'; '.join(e.problems)} ({entry.uri})"
    return Download(entry.identifier, final, size, fresh=True), None


class _Rejected(PipelineError):
    pass


def _copy_hashing(stream: BinaryIO, out: BinaryIO | None, expected_size: int) -> tuple[int, str]:
    """Copy and sha512-hash; stop one chunk past ``expected_size`` (never fill the disk for a liar)."""
    sha512, size = hashlib.sha512(), 0
    while chunk := stream.read(CHUNK):
        sha512.update(chunk)
        size += len(chunk)
        if out is not None:
            out.write(chunk)
        if size > expected_size:
            break
    return size, sha512.hexdigest()


def verify_image_list(
    source: str | Path,
    ca: Path,
    endorser_dn: str | None = None,
    download: Path | None = None,
    state: Path | None = None,
    *,
    identifier: str | None = None,
) -> ListReport:
    """Check a signed image list as a site does; ``VerificationError`` lists every problem, one per line.

    ``state`` (JSON) remembers which list each source served and, per list ``dc:identifier``, the last
    ``hv:version`` and ``dc:date:created`` accepted;
    it changes only when every check (downloads included) passed.
    """
    source = str(source)
    if not ca.exists():
        raise ConfigError(f"{ca}: CA certificate file (or directory) not found", hint="pass the CA that sites trust")
    now = dt.datetime.now(dt.UTC)
    raw = read_source(source)
    der, problems = _split_smime(raw)
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
    body, doc_problems = _payload_json(payload)
    problems += doc_problems
    if body is None or doc_problems:
        raise VerificationError(source, problems)
    signer_dn = openssl_dn(certs[0].subject) if len(certs) == 1 else ""
    signer_ca = openssl_dn(certs[0].issuer) if len(certs) == 1 else ""
    listed = body["hv:endorser"]["hv:x509"]
    if signer_dn and listed["hv:dn"] != signer_dn:
        problems.append(f"signer {signer_dn} is not the list's endorser hv:dn {listed['hv:dn']}")
    if signer_ca and listed["hv:ca"] != signer_ca:
        problems.append(f"signer's CA {signer_ca} is not the list's endorser hv:ca {listed['hv:ca']}")
    if endorser_dn is not None and signer_dn != endorser_dn:
        problems.append(f"signed by {signer_dn or 'nobody'}, expected endorser {endorser_dn}")
    problems += _date_problems(body, now)
    seen = _load_state(state)
    problems += _history_problems(body, source, seen, identifier)
    entries, image_problems = _images(body)
    problems += image_problems
    warnings = []
    if urlparse(source).scheme in ("http", "https") and body["hv:uri"] != source:
        warnings.append(f"hv:uri {body['hv:uri']} differs from where the list came from")
    last = seen["lists"].get(str(body["dc:identifier"]))
    if isinstance(last, dict) and str(last.get("hv:version")) == str(body["hv:version"]):
        warnings.append(f"hv:version {body['hv:version']} is the one seen before (no new list)")
    if problems:
        raise VerificationError(source, problems)
    downloads = []
    if download is not None:
        download.mkdir(parents=True, exist_ok=True)
        for entry in entries:
            done, problem = _fetch_image(entry, download)
            if problem:
                problems.append(problem)
            elif done:
                downloads.append(done)
        if problems:
            raise VerificationError(source, problems)
    if state is not None:
        seen["sources"][source] = str(body["dc:identifier"])
        seen["lists"][str(body["dc:identifier"])] = {k: body[k] for k in ("hv:version", "dc:date:created", "hv:uri")}
        write_text_atomic(state, json.dumps(seen, indent=2, sort_keys=True) + "\n")
    return ListReport(
        source,
        str(body["dc:identifier"]),
        str(body["hv:version"]),
        signer_dn,
        signer_ca,
        str(body["dc:date:created"]),
        str(body["dc:date:expires"]),
        tuple(entries),
        tuple(downloads),
        tuple(warnings),
    )
