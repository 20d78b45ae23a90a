"""Signed HEPiX image lists: the document sites (vmcatcher, cloudkeeper, atrope) trust.

A pure format: documents and certificates in, documents and text out; no environment, no files, no
settings. The catalogue's signer (``pipeline.catalogue.signing``) loads the endorser's key and calls
``build_image_list`` then signs ``serialise_image_list``'s bytes; ``pipeline.site.verify`` reads lists
back the way a site does.

Contract notes (additions to docs/architecture.md, all backwards compatible):
- ``build_image_list`` takes optional keyword-only ``identifier``, ``title``, ``description``
  (default: a uuid5 of ``uri``, and a text naming the VO), so a list keeps its ``dc:identifier``
  across versions without the caller storing it.
- ``Endorser.from_certificate(cert)``: DN/CA taken from the certificate, so the list's ``hv:endorser``
  always matches the signer.
- Numbers (``hv:size``, ``hv:ram_minimum``, ...) are JSON integers as in hepixvmitrust; the
  reader (``ImageListEntry.from_hepix``) also accepts AppDB's (ASCII) digit strings.
- The reader is strict, because a site acts on what strangers serve: ``load_list_json`` (unique keys,
  whole numbers, bounded depth, printable strings), ``list_problems`` (list-level fields, lifetime
  at most ``MAX_LIST_LIFETIME``), ``ImageListEntry.from_hepix`` (identifier, http(s) URL without
  user info, size, sha512). ``build_image_list`` runs the same checks, so the catalogue never signs
  a list that ``verify-list`` refuses.
"""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.x509.oid import NameOID

from pipeline.errors import ConfigError, PipelineError

DATE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # hepixvmitrust's time_format_definition
DEFAULT_SOURCE = "https://appdb.egi.eu/"  # AppDB's default dc:source, kept when the caller has none

# Required keys, by level: hepixvmitrust's sets, plus what atrope (19 image keys) and cloudkeeper demand.
LIST_REQUIRED = (
    "dc:date:created",
    "dc:date:expires",
    "dc:identifier",
    "dc:description",
    "dc:title",
    "dc:source",
    "hv:version",
    "hv:uri",
    "hv:endorser",
    "hv:images",
)
ENDORSER_REQUIRED = ("hv:dn", "hv:ca", "hv:email", "dc:creator")
IMAGE_REQUIRED = (
    "dc:identifier",
    "dc:title",
    "dc:description",
    "hv:uri",
    "hv:size",
    "sl:checksum:sha512",
    "sl:arch",
    "sl:os",
    "sl:osname",
    "sl:osversion",
    "sl:comments",
    "hv:hypervisor",
    "hv:format",
    "hv:version",
    "ad:group",
    "ad:mpuri",
    "ad:user:fullname",
    "ad:user:guid",
    "ad:user:uri",
)

# Bounds and shapes of what a site reads from a list (every value comes from whoever serves it).
MAX_IMAGES = 10_000  # AppDB's largest VO lists hold a few hundred images
MAX_IMAGE_BYTES = 2**40  # 1 TiB: no VM image in a list is larger; bounds every download
MAX_COUNT = 2**31 - 1  # RAM (MiB) and cores
MAX_NESTING = 16  # a HEPiX list nests 6 deep; deeper JSON is refused before anything walks it
MAX_TEXT = 65_536  # characters of one string (descriptions included)
MAX_URL = 2_048
MAX_LIST_LIFETIME = timedelta(days=366)
"""The longest ``dc:date:expires - dc:date:created`` a site accepts.

hepixvmitrust and the catalogue default to 4 weeks and re-sign before expiry; a list valid for years
would let anyone replaying an old (validly signed) list to a site without ``--state`` re-publish
withdrawn images for years. One year (plus a leap day) covers every sane configured lifetime.
"""
IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")  # a UUID, a safe file name
SHA512 = re.compile(r"^[0-9a-f]{128}\Z")
VO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}\Z")
LIST_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~:-]{0,63}\Z")
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z\Z")
_DIGITS = re.compile(r"^[0-9]{1,18}\Z")  # ASCII only: str.isdigit() takes '²' and int() then fails
_NUMERIC_TEXT = ("hv:version", "sl:osversion")  # text fields some writers emit as JSON numbers
_MULTILINE = ("dc:description", "sl:comments")  # free text: tab and line breaks allowed there only
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Unicode category Cc (C0, DEL, C1) and Cs (surrogates), and the bidirectional controls: one regex, C speed
_UNFIT = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_UNFIT_LINES = re.compile(  # tab, LF and CR allowed
    r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)


def format_date(when: datetime) -> str:
    """``when`` in UTC as hepixvmitrust writes it (naive datetimes are taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime(DATE_FORMAT)


def parse_date(text: str) -> datetime:
    """A HEPiX date (``%Y-%m-%dT%H:%M:%SZ``, ASCII digits only) as an aware UTC datetime; ``ValueError`` otherwise."""
    if not isinstance(text, str) or not _DATE.match(text):
        raise ValueError(f"{text!r} is not a %Y-%m-%dT%H:%M:%SZ date")
    return datetime.strptime(text, DATE_FORMAT).replace(tzinfo=UTC)


def _date_or_none(text: str) -> datetime | None:
    try:
        return parse_date(text)
    except ValueError:
        return None


def _shown(value: Any) -> str:
    """A value in a problem line: short, one line, printable (hostile input is never echoed raw)."""
    if isinstance(value, dict | list):
        return f"a JSON {'object' if isinstance(value, dict) else 'array'}"
    text = repr(value)
    text = text.encode("ascii", "backslashreplace").decode()
    return text if len(text) <= 80 else text[:77] + "..."


def text_problem(value: str, multiline: bool = False) -> str | None:
    """Why a string from a list is unfit to act on or print, or None.

    Refused: C0/C1 control characters and DEL (header and log injection; tab and newline only in free
    text), lone surrogates (cannot be printed or encoded), bidirectional overrides (text that
    displays other than it compares), and more than ``MAX_TEXT`` characters.
    """
    if len(value) > MAX_TEXT:
        return f"longer than {MAX_TEXT} characters"
    found = (_UNFIT_LINES if multiline else _UNFIT).search(value)
    if found is None:
        return None
    ch = found.group()
    if "\ud800" <= ch <= "\udfff":
        return f"contains a lone surrogate {ch.encode('utf-8', 'backslashreplace').decode()}"
    if ch in _BIDI:
        return f"contains the bidirectional control U+{ord(ch):04X}"
    return f"contains the control character {ch!r}"


def url_problem(url: str) -> str | None:
    """Why ``url`` is not a plain http(s) URL a site may fetch, or None (shape only; no name lookup)."""
    if len(url) > MAX_URL:
        return f"longer than {MAX_URL} characters"
    if problem := text_problem(url):
        return problem
    if any(ch.isspace() for ch in url):
        return f"{_shown(url)} contains white space"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError as e:
        return f"{_shown(url)} is not a URL ({e})"
    if parts.scheme not in ("http", "https"):
        return f"{_shown(url)} is not an http(s):// URL"
    if not parts.hostname:
        return f"{_shown(url)} names no host"
    if "@" in parts.netloc:
        return f"{_shown(url)} carries user info (user@host): refused"
    if parts.fragment:
        return f"{_shown(url)} has a #fragment"
    return None


@dataclass(frozen=True)
class ImageListEntry:
    """One endorsed image with every field HEPiX and AppDB consumers read.

    ``ram_minimum``/``ram_recommended`` are MiB, ``size`` is bytes of the file at ``uri``.
    """

    identifier: str  # dc:identifier, stable per appliance (sites key their cache on it)
    title: str  # dc:title
    description: str  # dc:description
    uri: str  # hv:uri: where sites download the image
    size: int  # hv:size
    sha512: str  # sl:checksum:sha512
    version: str  # hv:version (the appliance version)
    arch: str = "x86_64"  # sl:arch
    os: str = "Linux"  # sl:os
    osname: str = ""  # sl:osname, e.g. Debian
    osversion: str = ""  # sl:osversion, e.g. 12
    comments: str = ""  # sl:comments
    hypervisor: str = "QEMU,KVM"  # hv:hypervisor
    format: str = "OVA"  # hv:format
    ram_minimum: int = 0  # hv:ram_minimum
    core_minimum: int = 0  # hv:core_minimum
    ram_recommended: int | None = None  # ad:ram_recommended
    core_recommended: int | None = None  # ad:core_recommended
    expires: str | None = None  # per-image dc:date:expires (cloudkeeper requires it)
    mpuri: str = ""  # ad:mpuri: catalogue page of this version
    base_mpuri: str = ""  # ad:base_mpuri: catalogue page of the appliance
    appid: str = ""  # ad:appid
    group: str = "General group"  # ad:group
    user_fullname: str = ""  # ad:user:fullname (the maintainer)
    user_guid: str = ""  # ad:user:guid
    user_uri: str = ""  # ad:user:uri

    def to_hepix(self) -> dict[str, Any]:
        """``{"hv:image": {...}}`` with every key present (atrope rejects lists missing any)."""
        image: dict[str, Any] = {
            "dc:identifier": self.identifier,
            "dc:title": self.title,
            "dc:description": self.description,
            "hv:uri": self.uri,
            "hv:size": self.size,
            "sl:checksum:sha512": self.sha512,
            "hv:version": self.version,
            "sl:arch": self.arch,
            "sl:os": self.os,
            "sl:osname": self.osname,
            "sl:osversion": self.osversion,
            "sl:comments": self.comments,
            "hv:hypervisor": self.hypervisor,
            "hv:format": self.format,
            "hv:ram_minimum": self.ram_minimum,
            "hv:core_minimum": self.core_minimum,
            "ad:mpuri": self.mpuri,
            "ad:base_mpuri": self.base_mpuri,
            "ad:appid": self.appid,
            "ad:group": self.group,
            "ad:user:fullname": self.user_fullname,
            "ad:user:guid": self.user_guid,
            "ad:user:uri": self.user_uri,
        }
        if self.ram_recommended is not None:
            image["ad:ram_recommended"] = self.ram_recommended
        if self.core_recommended is not None:
            image["ad:core_recommended"] = self.core_recommended
        if self.expires is not None:
            image["dc:date:expires"] = self.expires
        return {"hv:image": image}

    @classmethod
    def from_hepix(cls, item: Any, where: str = "hv:images[]") -> ImageListEntry:
        """Read an image back; ``ConfigError`` lists every missing or malformed key with its path.

        Strict on what a site acts on: ``dc:identifier`` (a file name), ``hv:uri`` (an http(s) URL
        without user info), ``hv:size`` (1 byte to ``MAX_IMAGE_BYTES``), ``sl:checksum:sha512`` (128
        lower-case hex digits), whole numbers in range, HEPiX dates; every text field a string.
        """
        image = item.get("hv:image") if isinstance(item, Mapping) else None
        if not isinstance(image, Mapping):
            raise ConfigError(f"{where}: is not an object with an 'hv:image' member")
        at = f"{where}.hv:image"
        problems = [f"{at}.{k}: is required" for k in IMAGE_REQUIRED if k not in image]

        def number(key: str, default: int | None, low: int, high: int) -> int | None:
            value = image.get(key, default)
            if isinstance(value, str) and _DIGITS.match(value):
                value = int(value)
            if value is None or isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
                return value
            if isinstance(value, int) and not isinstance(value, bool):
                problems.append(f"{at}.{key}: {value} is out of range ({low} to {high})")
            else:
                problems.append(f"{at}.{key}: {_shown(value)} is not a whole number")
            return default

        size = number("hv:size", 0, 1, MAX_IMAGE_BYTES) if "hv:size" in image else 0
        values = dict(
            ram_minimum=number("hv:ram_minimum", 0, 0, MAX_COUNT) or 0,
            core_minimum=number("hv:core_minimum", 0, 0, MAX_COUNT) or 0,
            ram_recommended=number("ad:ram_recommended", None, 0, MAX_COUNT),
            core_recommended=number("ad:core_recommended", None, 0, MAX_COUNT),
        )
        text: dict[str, str] = {}
        for f, k in _TEXT_FIELDS:
            if k not in image:
                continue
            value = image[k]
            if isinstance(value, int) and not isinstance(value, bool) and k in _NUMERIC_TEXT and abs(value) < 10**18:
                value = str(value)
            if not isinstance(value, str):
                problems.append(f"{at}.{k}: {_shown(value)} is not a string")
                continue
            problem = text_problem(value, multiline=k in _MULTILINE)
            if problem:
                problems.append(f"{at}.{k}: {problem}")
                continue
            text[f.name] = value
        if "identifier" in text and not IDENTIFIER.match(text["identifier"]):
            problems.append(f"{at}.dc:identifier: {text['identifier']!r} is not an identifier ({IDENTIFIER.pattern})")
        if "sha512" in text and not SHA512.match(text["sha512"]):
            problems.append(f"{at}.sl:checksum:sha512: is not 128 lower-case hexadecimal digits")
        if "uri" in text and (problem := url_problem(text["uri"])):
            problems.append(f"{at}.hv:uri: {problem}")
        expires = image.get("dc:date:expires")
        if expires is not None and not (isinstance(expires, str) and _date_or_none(expires)):
            problems.append(f"{at}.dc:date:expires: {_shown(expires)} is not a %Y-%m-%dT%H:%M:%SZ date")
        if problems:
            raise ConfigError(problems)
        return cls(size=size or 0, expires=expires, **text, **values)  # type: ignore[arg-type]


_KEYS = {
    "identifier": "dc:identifier",
    "title": "dc:title",
    "description": "dc:description",
    "uri": "hv:uri",
    "sha512": "sl:checksum:sha512",
    "version": "hv:version",
    "arch": "sl:arch",
    "os": "sl:os",
    "osname": "sl:osname",
    "osversion": "sl:osversion",
    "comments": "sl:comments",
    "hypervisor": "hv:hypervisor",
    "format": "hv:format",
    "mpuri": "ad:mpuri",
    "base_mpuri": "ad:base_mpuri",
    "appid": "ad:appid",
    "group": "ad:group",
    "user_fullname": "ad:user:fullname",
    "user_guid": "ad:user:guid",
    "user_uri": "ad:user:uri",
}
_TEXT_FIELDS = [(f, _KEYS[f.name]) for f in dataclasses.fields(ImageListEntry) if f.name in _KEYS]


@dataclass(frozen=True)
class Endorser:
    """Who vouches for the list: ``dn``/``ca`` in OpenSSL's ``/DC=.../CN=...`` form, as sites compare them."""

    dn: str
    ca: str
    email: str
    name: str  # dc:creator

    def to_hepix(self) -> dict[str, Any]:
        return {"hv:x509": {"hv:dn": self.dn, "hv:ca": self.ca, "hv:email": self.email, "dc:creator": self.name}}

    @classmethod
    def from_certificate(cls, cert: x509.Certificate, email: str | None = None, name: str | None = None) -> Endorser:
        """The endorser a certificate speaks for (so ``hv:endorser`` always equals the signer)."""
        return cls(
            dn=openssl_dn(cert.subject),
            ca=openssl_dn(cert.issuer),
            email=email or certificate_email(cert) or "",
            name=name or _first(cert.subject, NameOID.COMMON_NAME) or openssl_dn(cert.subject),
        )


_SHORT = {NameOID.EMAIL_ADDRESS: "emailAddress", NameOID.USER_ID: "UID", NameOID.SERIAL_NUMBER: "serialNumber"}


def openssl_dn(name: x509.Name) -> str:
    """A Name as OpenSSL's one-line form in certificate order (``/DC=org/DC=x/CN=y``), HEPiX's DN syntax."""
    parts = []
    for rdn in name.rdns:
        for attr in rdn:
            key = _SHORT.get(attr.oid) or attr.rfc4514_attribute_name
            value = attr.value if isinstance(attr.value, str) else attr.value.decode(errors="replace")
            parts.append(f"/{key}={value}")
    return "".join(parts)


def _first(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    attrs = name.get_attributes_for_oid(oid)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode(errors="replace")


def certificate_email(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        emails = san.get_values_for_type(x509.RFC822Name)
        if emails:
            return emails[0]
    except x509.ExtensionNotFound:
        pass
    return _first(cert.subject, NameOID.EMAIL_ADDRESS)


def list_identifier(uri: str) -> str:
    """The stable ``dc:identifier`` of the list served at ``uri`` (uuid5: same URL, same id, every version)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, uri))


class _Refused(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:  # parsers disagree on which duplicate wins: the signed meaning is ambiguous
            raise _Refused(f"the key {_shown(key)} appears twice in one object")
        obj[key] = value
    return obj


def _integer(text: str) -> int:
    if len(text) > 19:
        raise _Refused(f"the number {text[:20]}... has more than 19 digits")
    return int(text)


def _no_float(text: str) -> Any:
    raise _Refused(f"the number {text[:20]} is not a whole number (no fractions in an image list)")


def _no_constant(text: str) -> Any:
    raise _Refused(f"{text} is not JSON")


def load_list_json(payload: bytes) -> tuple[Any, list[str]]:
    """Strict JSON for signed lists: UTF-8, unique keys, whole numbers of at most 19 digits, no NaN or
    Infinity, at most ``MAX_NESTING`` deep (the C parser's own recursion bound stops deeper bombs),
    every string and key printable (``text_problem``).

    Returns (document, problems); never raises on any input.
    """
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, [f"signed payload is not UTF-8 (byte {e.start})"]
    try:
        doc = json.loads(
            text, object_pairs_hook=_pairs, parse_int=_integer, parse_float=_no_float, parse_constant=_no_constant
        )
    except _Refused as e:
        return None, [f"signed payload: {e}"]
    except RecursionError:
        return None, [f"signed payload nests deeper than {MAX_NESTING} levels"]
    except ValueError as e:  # JSONDecodeError included
        return None, [f"signed payload is not JSON: {_shown(str(e))[1:-1]}"]
    problems: list[str] = []
    stack: list[tuple[str, int, Any]] = [("", 0, doc)]
    while stack and len(problems) < 20:
        path, depth, value = stack.pop()
        if isinstance(value, dict | list) and depth >= MAX_NESTING:
            return None, [f"signed payload nests deeper than {MAX_NESTING} levels (at {path})"]
        if isinstance(value, dict):
            for key, item in value.items():
                if problem := text_problem(key):
                    problems.append(f"{path or 'payload'}: a key {problem}")
                    continue
                stack.append((f"{path}.{key}" if path else key, depth + 1, item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{n}]", depth + 1, item) for n, item in enumerate(value))
        elif isinstance(value, str) and (problem := text_problem(value, path.rsplit(".", 1)[-1] in _MULTILINE)):
            problems.append(f"{path}: {problem}")
    return doc, sorted(problems)


def list_problems(body: Mapping[str, Any]) -> list[str]:
    """Every problem of the list-level fields of ``hv:imagelist`` (not the images), one line each."""
    at = "hv:imagelist"
    problems = [f"{at}.{k}: is required" for k in LIST_REQUIRED if k not in body]
    for key in ("dc:identifier", "dc:title", "dc:description", "dc:source", "hv:uri", "hv:version"):
        value = body.get(key)
        if key in body and not (isinstance(value, str) or key == "hv:version" and type(value) is int):
            problems.append(f"{at}.{key}: {_shown(value)} is not a string")
    identifier, version, uri = body.get("dc:identifier"), body.get("hv:version"), body.get("hv:uri")
    if isinstance(identifier, str) and not IDENTIFIER.match(identifier):
        problems.append(f"{at}.dc:identifier: {_shown(identifier)} is not an identifier ({IDENTIFIER.pattern})")
    if isinstance(version, str | int) and not LIST_VERSION.match(str(version)):
        problems.append(f"{at}.hv:version: {_shown(version)} is not a version ({LIST_VERSION.pattern})")
    if isinstance(uri, str) and (problem := url_problem(uri)):
        problems.append(f"{at}.hv:uri: {problem}")
    vo = body.get("ad:vo")
    if vo is not None and not (isinstance(vo, str) and VO_NAME.match(vo)):
        problems.append(f"{at}.ad:vo: {_shown(vo)} is not a VO name ({VO_NAME.pattern})")
    dates = {}
    for key in ("dc:date:created", "dc:date:expires"):
        if key in body:
            when = _date_or_none(body[key]) if isinstance(body[key], str) else None
            if when is None:
                problems.append(f"{at}.{key}: {_shown(body[key])} is not a %Y-%m-%dT%H:%M:%SZ date")
            dates[key] = when
    created, expires = dates.get("dc:date:created"), dates.get("dc:date:expires")
    if created is not None and expires is not None:
        if expires <= created:
            problems.append(f"{at}.dc:date:expires: {body['dc:date:expires']} is not after dc:date:created")
        elif expires - created > MAX_LIST_LIFETIME:
            problems.append(
                f"{at}.dc:date:expires: {body['dc:date:expires']} is more than {MAX_LIST_LIFETIME.days} days "
                f"after dc:date:created {body['dc:date:created']}"
            )
    endorser = body.get("hv:endorser")
    x509_part = endorser.get("hv:x509") if isinstance(endorser, Mapping) else None
    if "hv:endorser" in body and not isinstance(x509_part, Mapping):
        problems.append(f"{at}.hv:endorser.hv:x509: is required")
    elif isinstance(x509_part, Mapping):
        for k in ENDORSER_REQUIRED:
            if k not in x509_part:
                problems.append(f"{at}.hv:endorser.hv:x509.{k}: is required")
            elif not isinstance(x509_part[k], str):
                problems.append(f"{at}.hv:endorser.hv:x509.{k}: {_shown(x509_part[k])} is not a string")
    images = body.get("hv:images")
    if "hv:images" in body and not isinstance(images, list):
        problems.append(f"{at}.hv:images: is not a list")
    elif isinstance(images, list) and len(images) > MAX_IMAGES:
        problems.append(f"{at}.hv:images: {len(images)} images, more than {MAX_IMAGES}")
    return problems


def build_image_list(
    vo: str,
    entries: Sequence[ImageListEntry],
    endorser: Endorser,
    hv_version: str | int,
    created: datetime,
    expires: datetime,
    uri: str,
    source: str = DEFAULT_SOURCE,
    *,
    identifier: str | None = None,
    title: str | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """The HEPiX JSON document ``{"hv:imagelist": {...}}`` of a VO's endorsed images.

    Refuses a list that sites would reject anyway (expiry before creation or more than
    ``MAX_LIST_LIFETIME`` after it, duplicate image ids, any field ``verify-list`` refuses).
    """
    if expires <= created:
        raise PipelineError(f"image list for {vo}: expires ({expires}) must be after created ({created})")
    seen: set[str] = set()
    for e in entries:
        if e.identifier in seen:
            raise PipelineError(f"image list for {vo}: image dc:identifier {e.identifier} appears twice")
        seen.add(e.identifier)
    if expires - created > MAX_LIST_LIFETIME:
        raise PipelineError(
            f"image list for {vo}: a lifetime of {expires - created} is more than sites accept "
            f"({MAX_LIST_LIFETIME.days} days)"
        )
    document = {
        "hv:imagelist": {
            "dc:date:created": format_date(created),
            "dc:date:expires": format_date(expires),
            "dc:identifier": identifier or list_identifier(uri),
            "dc:description": description or f"VO-wide image list for the {vo} VO.",
            "dc:title": title or f"Image list for {vo}",
            "dc:source": source,
            "hv:version": str(hv_version),
            "hv:uri": uri,
            "hv:endorser": endorser.to_hepix(),
            "hv:images": [e.to_hepix() for e in entries],
            "ad:vo": vo,
            "ad:num_of_images": len(entries),
        }
    }
    # what is signed is what sites accept: the verifier's own field checks, run before signing
    problems = list_problems(document["hv:imagelist"])
    for n, e in enumerate(entries):
        try:
            ImageListEntry.from_hepix(e.to_hepix(), f"hv:imagelist.hv:images[{n}]")
        except ConfigError as err:
            problems += err.problems
    if problems:
        raise ConfigError([f"image list for {vo}: {p}" for p in problems])
    return document


def serialise_image_list(document: Mapping[str, Any]) -> bytes:
    """The exact bytes that get signed: sorted keys, 2-space indent, as hepixvmitrust's signer writes."""
    return (json.dumps(document, sort_keys=True, indent=2) + "\n").encode()
