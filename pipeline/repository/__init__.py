"""The appliance repository: where packaged artifacts land so that sites can download them.

One protocol, three backends chosen by URL (``open_repository``):

- ``file:///path`` — a local folder (the embedded default; ``invoke serve`` serves it under ``/repo/``);
- ``s3://bucket/prefix`` — any S3 API (AWS, Ceph RGW, MinIO) through boto3;
- ``oci://host[:port]/project`` — an OCI registry (Harbor, CNCF distribution), images as OCI artifacts.

Keys are relative (``<appliance>/<version>/<file>``) and immutable: ``put`` never overwrites an
existing object (conditional create), it proves what is already there instead. Nothing partial is
ever visible at a final key. ``repository_public_url`` is the URL under which the repository root
(the folder, or ``s3://bucket/prefix``) is served; ``public_url(key)`` appends the key to it.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit

from pipeline.errors import ConfigError, UploadError
from pipeline.fsutil import Digests
from pipeline.log import log
from pipeline.repository.journal import UploadJournal
from pipeline.settings import Settings

__all__ = [
    "ObjectInfo",
    "PutOutcome",
    "PutResult",
    "Repository",
    "Sink",
    "UploadJournal",
    "UploadTuning",
    "check_key",
    "open_repository",
]

_KEY_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


class PutOutcome(enum.StrEnum):
    UPLOADED = "uploaded"  # this call created the object
    RESUMED = "resumed"  # this call completed an upload a killed run had started
    PRESENT = "present"  # the object was already there, with the expected content


@dataclass(frozen=True)
class PutResult:
    key: str
    outcome: PutOutcome
    size: int
    seconds: float

    @property
    def mib_per_s(self) -> float:
        return self.size / 1048576 / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    metadata: dict[str, str]  # what the uploader recorded (sha256, sha512), not proof by itself
    checksum_sha256: str | None = None  # the store's own checksum (base64; "-N" suffix when composite)


@dataclass(frozen=True)
class UploadTuning:
    """How uploads are cut and retried; the defaults suit files of a few GiB on a LAN or WAN."""

    part_size: int = 16 * 1024 * 1024  # S3 needs >= 5 MiB (except the last part) and <= 10,000 parts
    multipart_threshold: int = 64 * 1024 * 1024  # smaller files go in one conditional PUT
    concurrency: int = 4  # parts in flight (memory use is concurrency x part_size)
    attempts: int = 10  # per request, in all: ~25 s of backoff (botocore retries transient failures; s3._call)
    backoff: float = 0.5  # first wait in seconds; doubles each attempt, with jitter
    progress: bool = True  # tqdm bar on stderr when it is a terminal

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> UploadTuning:
        """Defaults, overridden by ``VMI_UPLOAD_PART_MIB``, ``VMI_UPLOAD_THRESHOLD_MIB``, ``VMI_UPLOAD_CONCURRENCY``
        and ``VMI_UPLOAD_ATTEMPTS`` (for slow links, small test files, or stores with other limits)."""
        values: dict[str, Any] = {}
        problems = []
        for var, name, scale, least in (
            ("VMI_UPLOAD_PART_MIB", "part_size", 1048576, 5),
            ("VMI_UPLOAD_THRESHOLD_MIB", "multipart_threshold", 1048576, 5),
            ("VMI_UPLOAD_CONCURRENCY", "concurrency", 1, 1),
            ("VMI_UPLOAD_ATTEMPTS", "attempts", 1, 1),
        ):
            raw = environ.get(var)
            if raw is None:
                continue
            if not raw.isdigit() or int(raw) < least:
                problems.append(f"environment: {var}: {raw!r} must be an integer >= {least}")
                continue
            values[name] = int(raw) * scale
        if problems:
            raise ConfigError(problems)
        return dataclasses.replace(cls(), **values)

    def part_size_for(self, size: int) -> int:
        """The configured part size, grown in MiB steps so that a file never needs more than 9,000 parts."""
        needed = -(-size // 9000)
        mib = 1024 * 1024
        return max(self.part_size, -(-needed // mib) * mib)


class Sink(Protocol):
    """Where ``Repository.fetch`` writes: a binary file, or a ``fsutil.HashingWriter`` over one."""

    def write(self, data: bytes, /) -> int: ...


class Repository(Protocol):
    """What publish, audit and retention need from a repository."""

    url: str

    def put(self, key: str, path: Path, expected: Digests, journal: UploadJournal | None = None) -> PutResult:
        """Upload ``path`` to ``key`` unless an object with ``expected`` content is already there.

        Reads the file once, hashing it; raises ``UploadError`` if it does not hash to ``expected``
        (then nothing appears at ``key``) or if ``key`` holds different bytes.
        """
        ...

    def preflight(self) -> None:
        """Fail early, before anything is read or sent, if the repository cannot be written."""
        ...

    def head(self, key: str) -> ObjectInfo | None: ...

    def exists(self, key: str) -> bool: ...

    def verify(self, key: str, expected: Digests) -> list[str]:
        """Problems with the object at ``key`` (missing, size, checksums of the stored bytes); [] if sound."""
        ...

    def delete(self, key: str) -> None: ...

    def fetch(self, key: str, target: Sink, max_bytes: int) -> int:
        """Write the object at ``key`` to ``target`` and return its size; ``ArtifactError`` if it is
        missing or larger than ``max_bytes`` (the caller verifies the bytes against the catalogue)."""
        ...

    def iter_objects(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    def public_url(self, key: str) -> str: ...

    def key_for_url(self, url: str) -> str | None:
        """The key of a public URL of this repository; None if the URL points elsewhere."""
        ...


def check_key(key: str) -> str:
    """Refuse keys that could escape the repository root or hide files (``..``, ``.x``, empty segments)."""
    segments = key.split("/")
    if not key or any(not _KEY_SEGMENT.match(s) for s in segments):
        raise UploadError(f"repository key {key!r} is not valid", hint="keys look like <appliance>/<version>/<file>")
    return key


def compare(subject: str, expected: Digests, found: Digests) -> list[str]:
    """Every difference between what should be at ``subject`` and what is, one line each."""
    problems = []
    if found.size != expected.size:
        problems.append(f"{subject}: size is {found.size}, expected {expected.size}")
    if found.sha256 != expected.sha256:
        problems.append(f"{subject}: sha256 is {found.sha256}, expected {expected.sha256}")
    if found.sha512 != expected.sha512:
        problems.append(f"{subject}: sha512 is {found.sha512[:16]}..., expected {expected.sha512[:16]}...")
    return problems


def check_source(path: Path, expected: Digests, read: Digests) -> None:
    """The bytes read for upload must be the bytes the manifest describes (packaging is done by then)."""
    problems = compare(str(path), expected, read)
    if problems:
        raise UploadError(
            f"{path} changed since it was packaged: " + "; ".join(problems),
            hint="package the version again, then publish",
        )


def prove_present(repository: Repository, key: str, expected: Digests) -> None:
    """An existing object is accepted only if its stored bytes are the expected ones (never overwritten)."""
    problems = repository.verify(key, expected)
    if problems:
        raise UploadError(
            f"{repository.url}: {key} already exists with different content: " + "; ".join(problems),
            hint="a published version is immutable: package and publish a new version",
        )
    log.info("%s is already in the repository, verified", key)


def public_url(base: str, key: str) -> str:
    return base.rstrip("/") + "/" + quote(key)


def key_for_url(base: str, url: str) -> str | None:
    root = base.rstrip("/") + "/"
    if not url.startswith(root):
        return None
    return unquote(url[len(root) :])


def open_repository(
    settings: Settings, tuning: UploadTuning | None = None, insecure: bool = False, url: str | None = None
) -> Repository:
    """The repository named by ``settings.repository`` (``file://``, ``s3://`` or ``oci://``; ``insecure``:
    plain HTTP to a loopback registry), or the mirror ``url``: a mirror's objects are named by its own
    URL (``repository_public_url`` is the primary's)."""
    public_base = settings.repository_public_url
    if url is not None and url != settings.repository:
        public_base = url
    url = url or settings.repository
    parts = urlsplit(url)
    if parts.scheme == "oci":
        from pipeline.repository.oci import OciRepository

        return OciRepository(url, tuning or UploadTuning.from_environ(os.environ), insecure)
    if parts.scheme == "file":
        from pipeline.repository.local import FileRepository

        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"invoke.yaml: vmi.repository: {url!r}: a file:// URL needs an absolute path")
        return FileRepository(Path(unquote(parts.path)), public_base, tuning or UploadTuning.from_environ(os.environ))
    if parts.scheme == "s3":
        from pipeline.repository.s3 import S3Repository

        if not parts.netloc:
            raise ConfigError(f"invoke.yaml: vmi.repository: {url!r}: no bucket", hint="use s3://bucket/prefix")
        return S3Repository(
            bucket=parts.netloc,
            prefix=parts.path.strip("/"),
            public_base=public_base,
            endpoint_url=settings.s3_endpoint_url,
            profile=settings.s3_profile,
            tuning=tuning or UploadTuning.from_environ(os.environ),
        )
    raise ConfigError(
        f"invoke.yaml: vmi.repository: {url!r}: unsupported scheme {parts.scheme!r}",
        hint="use file:///path, s3://bucket/prefix or oci://host[:port]/project",
    )
