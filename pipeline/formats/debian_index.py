"""Debian ``Packages`` indexes, as a mirror serves them: bounded decompression and the versions they
list. A mirror is outside input: a small ``.xz`` can inflate to gigabytes and a paragraph can carry a
version that is not a Debian version, so both are checked here and never crash a caller."""

from __future__ import annotations

import gzip
import lzma
import zlib
from collections.abc import Iterator

from debian.deb822 import Packages
from debian.debian_support import Version

# bookworm's main/binary-amd64/Packages is ~46 MiB; leave room for bigger suites, never gigabytes.
MAX_INDEX_BYTES = 256 * 1024**2
_CHUNK = 1 << 20


class BadIndex(ValueError):
    """The data is not a (compressed) package index within the bounds."""


def decompress(data: bytes, compression: str, limit: int = MAX_INDEX_BYTES) -> bytes:
    """``data`` decompressed (``xz``, ``gz`` or ``none``), refusing output beyond ``limit`` bytes."""
    if compression == "none":
        if len(data) > limit:
            raise BadIndex(f"index is over {limit} bytes")
        return data
    if compression == "xz":
        xz = lzma.LZMADecompressor()
        out = xz.decompress(data, max_length=limit + 1)
        complete = xz.eof
    elif compression == "gz":
        gz = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        out = gz.decompress(data, limit + 1)
        complete = gz.eof
    else:
        raise BadIndex(f"unknown compression {compression!r}")
    if len(out) > limit:
        raise BadIndex(f"index inflates to over {limit} bytes")
    if not complete:
        raise BadIndex(f"truncated {compression} data")
    return out


def decompress_checked(data: bytes, compression: str, limit: int = MAX_INDEX_BYTES) -> bytes:
    """As ``decompress``, with the codecs' own errors turned into ``BadIndex``."""
    try:
        return decompress(data, compression, limit)
    except (lzma.LZMAError, zlib.error, gzip.BadGzipFile, EOFError) as e:
        raise BadIndex(f"not {compression}-compressed: {e}") from e


def iter_versions(text: str) -> Iterator[tuple[str, str | None, str]]:
    """``(package, architecture or None, version)`` of each paragraph with a valid Debian version."""
    for para in Packages.iter_paragraphs(text, fields=["Package", "Version", "Architecture"], use_apt_pkg=False):
        name, version = para.get("Package"), para.get("Version")
        if not name or not version:
            continue
        try:
            Version(version)
        except ValueError:
            continue
        yield name, para.get("Architecture") or None, version


def newer(candidate: str, than: str) -> bool:
    """Debian's version order (epochs, ``~``, ``+bN``) for two valid versions."""
    return bool(Version(candidate) > Version(than))
