"""The package archive's current state: which installed packages have newer versions, security first.

A version's manifest records its apt sources (``deb URI SUITE COMPONENTS``) and its installed
packages. For each source we fetch the suite's ``Packages.xz`` index (conditional GET, cached under
``<cache_dir>/archive``; the parsed name -> version map is cached by content digest so an unchanged
index is never parsed twice) and compare with Debian's version ordering (python-debian).
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

import requests

from pipeline.errors import PipelineError
from pipeline.formats import debian_index
from pipeline.fsutil import write_text_atomic
from pipeline.log import log
from pipeline.manifest import InstalledPackage
from pipeline.netutil import get_capped

# Debian architecture names for the manifest's (and the appliance's) machine names.
DEBIAN_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}

# An index fetched less than this long ago is used without asking the mirror again.
DEFAULT_FRESH_SECONDS = 600.0
TIMEOUT_SECONDS = 60.0
# a suite's Packages.xz is ~10 MiB; what it inflates to is capped in pipeline.formats.debian_index
MAX_COMPRESSED_INDEX_BYTES = 64 * 1024**2


class ArchiveError(PipelineError):
    """A package index could not be fetched or read (and no cached copy exists)."""


@dataclass(frozen=True)
class AptSource:
    """One ``deb`` line of a version's manifest (``base.sources``)."""

    uri: str
    suite: str
    components: tuple[str, ...]

    @property
    def security(self) -> bool:
        """Security suites (Debian ``*-security``, Ubuntu ``security.ubuntu.com``) are checked first."""
        return self.suite.endswith("-security") or "security" in self.uri.split("://", 1)[-1].split("/", 1)[0]

    def index_urls(self, arch: str) -> list[str]:
        base = self.uri.rstrip("/")
        return [f"{base}/dists/{self.suite}/{c}/binary-{arch}/Packages.xz" for c in self.components]


def parse_source(line: str) -> AptSource | None:
    """``deb [opts] URI SUITE COMP...`` -> ``AptSource``; ``None`` for anything else (deb-src, rpm repos)."""
    words = line.split()
    if not words or words[0] != "deb":
        return None
    words = words[1:]
    if words and words[0].startswith("["):  # options such as [signed-by=...]
        while words and not words[0].endswith("]"):
            words = words[1:]
        words = words[1:]
    if len(words) < 3 or "://" not in words[0]:
        return None
    return AptSource(words[0], words[1], tuple(words[2:]))


@dataclass(frozen=True)
class PackageUpdate:
    name: str
    arch: str
    installed: str
    available: str
    suite: str
    security: bool

    def __str__(self) -> str:
        return f"{self.name} {self.installed} -> {self.available} ({self.suite})"


@dataclass
class SuiteIndex:
    """The newest version of each binary package in one ``Packages`` index."""

    url: str
    source: AptSource
    versions: dict[str, str]


@dataclass
class ArchiveIndex:
    """Fetches, caches and compares package indexes; one instance serves a whole rebuild run."""

    cache_dir: Path
    fresh_seconds: float = DEFAULT_FRESH_SECONDS
    session: requests.Session = field(default_factory=requests.Session)
    _loaded: dict[str, SuiteIndex] = field(default_factory=dict)
    _failed: dict[str, str] = field(default_factory=dict)

    def index(self, source: AptSource, url: str) -> SuiteIndex:
        """The parsed index at ``url``, from memory, the fresh cache, or the mirror (conditional GET)."""
        if url in self._loaded:
            return self._loaded[url]
        if url in self._failed:
            raise ArchiveError(self._failed[url])
        try:
            versions = self._fetch(url)
        except ArchiveError as e:
            self._failed[url] = str(e)
            raise
        found = SuiteIndex(url, source, versions)
        self._loaded[url] = found
        return found

    def updates(self, packages: Iterable[InstalledPackage], sources: Iterable[str], arch: str) -> list[PackageUpdate]:
        """Installed packages that have a newer version in the sources' suites; security updates first.

        Raises ``ArchiveError`` if an index is unreachable and not cached.
        """
        deb_arch = DEBIAN_ARCH.get(arch, arch)
        indexes = [
            self.index(src, url)
            for src in filter(None, (parse_source(s) for s in sources))
            for url in src.index_urls(deb_arch)
        ]
        found = []
        for pkg in packages:
            if pkg.arch not in (deb_arch, "all"):
                continue
            best: tuple[str, SuiteIndex] | None = None
            security_newer = False
            for idx in indexes:
                available = idx.versions.get(pkg.name)
                if available is None or available == pkg.version or not newer(available, pkg.version):
                    continue
                security_newer = security_newer or idx.source.security
                if best is None or newer(available, best[0]):
                    best = (available, idx)
            if best is not None:
                found.append(
                    PackageUpdate(
                        pkg.name, pkg.arch, pkg.version, best[0], best[1].source.suite, security=security_newer
                    )
                )
        found.sort(key=lambda u: (not u.security, u.name))
        return found

    # -- fetching and caching -------------------------------------------------------------------

    def _paths(self, url: str) -> tuple[Path, Path]:
        key = hashlib.sha256(url.encode()).hexdigest()[:24]
        return self.cache_dir / f"{key}.meta.json", self.cache_dir / f"{key}.versions.json"

    def _fetch(self, url: str) -> dict[str, str]:
        meta_path, versions_path = self._paths(url)
        meta = _read_json(meta_path)
        cached: dict[str, str] | None = (_read_json(versions_path) or None) if meta else None
        if cached is not None and time.time() - float(meta.get("fetched_at", 0)) < self.fresh_seconds:
            return cached
        headers = {}
        if cached is not None and meta.get("last_modified"):
            headers["If-Modified-Since"] = str(meta["last_modified"])
        if cached is not None and meta.get("etag"):
            headers["If-None-Match"] = str(meta["etag"])
        try:
            response = get_capped(
                self.session, url, headers=headers, timeout=TIMEOUT_SECONDS, limit=MAX_COMPRESSED_INDEX_BYTES
            )
        except requests.RequestException as e:
            if cached is not None:
                log.warning("package index %s unreachable (%s); using the copy fetched %s", url, e, meta.get("date"))
                return cached
            raise ArchiveError(f"{url}: package index unreachable: {e}", hint="check the network or the mirror") from e
        if response.status_code == 304 and cached is not None:
            self._save_meta(meta_path, url, meta, response.headers, str(meta["sha256"]))
            return cached
        if response.status_code != 200:
            if cached is not None:
                log.warning("package index %s: HTTP %s; using the cached copy", url, response.status_code)
                return cached
            raise ArchiveError(f"{url}: package index: HTTP {response.status_code}")
        digest = hashlib.sha256(response.content).hexdigest()
        if cached is None or meta.get("sha256") != digest:
            cached = parse_packages_xz(response.content, url)
            write_text_atomic(versions_path, json.dumps(cached, sort_keys=True))
        self._save_meta(meta_path, url, meta, response.headers, digest)
        return cached

    def _save_meta(
        self, path: Path, url: str, old: Mapping[str, object], headers: Mapping[str, str], digest: str
    ) -> None:
        meta = {
            "url": url,
            "sha256": digest,
            "fetched_at": time.time(),
            "date": formatdate(usegmt=True),
            "last_modified": headers.get("Last-Modified", old.get("last_modified")),
            "etag": headers.get("ETag", old.get("etag")),
        }
        write_text_atomic(path, json.dumps(meta, sort_keys=True))


@functools.lru_cache(maxsize=65536)
def newer(candidate: str, than: str) -> bool:
    """Debian's ordering (epochs, ``~``, ``+bN``); memoised: the same pairs recur across appliances."""
    return debian_index.newer(candidate, than)


def parse_packages_xz(data: bytes, source: str) -> dict[str, str]:
    """Newest version of each package in an xz-compressed Debian ``Packages`` index (bounded)."""
    try:
        text = debian_index.decompress_checked(data, "xz").decode("utf-8", errors="replace")
    except debian_index.BadIndex as e:
        raise ArchiveError(f"{source}: not a usable xz-compressed package index ({e})") from e
    return parse_packages(text)


def parse_packages(text: str) -> dict[str, str]:
    """Newest version of each package in a ``Packages`` index (deb822 paragraphs)."""
    newest: dict[str, str] = {}
    for name, _arch, version in debian_index.iter_versions(text):
        old = newest.get(name)
        if old is None or newer(version, old):
            newest[name] = version
    return newest


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
