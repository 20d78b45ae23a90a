"""Files that appear at their final name only when complete, and hashing while bytes flow."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class Digests:
    size: int
    sha256: str
    sha512: str


class HashingWriter:
    """A binary file-like that forwards writes and hashes them (sha256 + sha512) on the way.

    Lets a stage compute checksums in the same pass that writes the data.
    """

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._sha256 = hashlib.sha256()
        self._sha512 = hashlib.sha512()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._sha256.update(data)
        self._sha512.update(data)
        self.size += len(data)
        return self._raw.write(data)

    def flush(self) -> None:
        self._raw.flush()

    def digests(self) -> Digests:
        return Digests(self.size, self._sha256.hexdigest(), self._sha512.hexdigest())


def hash_stream(stream: BinaryIO) -> Digests:
    """sha256 and sha512 of everything left in ``stream``, in one read."""
    sha256, sha512, size = hashlib.sha256(), hashlib.sha512(), 0
    while chunk := stream.read(CHUNK):
        sha256.update(chunk)
        sha512.update(chunk)
        size += len(chunk)
    return Digests(size, sha256.hexdigest(), sha512.hexdigest())


def hash_file(path: Path) -> Digests:
    with open(path, "rb") as f:
        return hash_stream(f)


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it over ``final`` only if the block succeeds.

    A failure (or a kill) never leaves a partial file at the final name.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_write(final: Path) -> Iterator[BinaryIO]:
    """Open a temporary file for writing; it becomes ``final`` (fsynced) only if the block succeeds."""
    with atomic_path(final) as tmp, open(tmp, "wb") as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def write_text_atomic(final: Path, text: str) -> None:
    with atomic_write(final) as f:
        f.write(text.encode())
