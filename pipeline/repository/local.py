"""A repository in a local folder (``file://``), the embedded default served by ``invoke serve``.

The same guarantees as S3 with filesystem primitives (after debian-cloud-images' publish step):
copy into a hidden temporary file beside the final name while hashing, fsync, make it read-only,
then ``link()`` it to the final name — which fails if the name exists, the filesystem's
``If-None-Match: *``. A kill leaves at most a hidden ``.partial`` file, never a partial final file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import ArtifactError, UploadError
from pipeline.fsutil import CHUNK, Digests, HashingWriter, hash_file
from pipeline.repository import (
    ObjectInfo,
    PutOutcome,
    PutResult,
    Sink,
    UploadJournal,
    UploadTuning,
    check_key,
    check_source,
    compare,
    key_for_url,
    prove_present,
    public_url,
)
from pipeline.repository.progress import progress_bar


class FileRepository:
    def __init__(self, root: Path, public_base: str, tuning: UploadTuning | None = None) -> None:
        self.root = root
        self.url = root.as_uri()
        self.public_base = public_base
        self.tuning = tuning or UploadTuning()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def preflight(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UploadError(f"{self.url}: cannot create the repository folder: {e}") from e
        if not os.access(self.root, os.W_OK):
            raise UploadError(f"{self.url}: the repository folder is not writable")

    def put(self, key: str, path: Path, expected: Digests, journal: UploadJournal | None = None) -> PutResult:
        final = self._path(key)
        start = time.monotonic()
        if final.exists():
            prove_present(self, key, expected)
            return PutResult(key, PutOutcome.PRESENT, expected.size, time.monotonic() - start)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
        tmp = Path(tmp_name)
        try:
            with (
                open(path, "rb") as src,
                os.fdopen(fd, "wb") as raw,
                progress_bar(expected.size, final.name, self.tuning.progress) as bar,
            ):
                out = HashingWriter(raw)
                while chunk := src.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
                raw.flush()
                os.fsync(raw.fileno())
            check_source(path, expected, out.digests())
            tmp.chmod(0o444)
            try:
                os.link(tmp, final)
                outcome = PutOutcome.UPLOADED
            except FileExistsError:  # another publisher won the race: prove its copy instead
                prove_present(self, key, expected)
                outcome = PutOutcome.PRESENT
            _fsync_dir(final.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return PutResult(key, outcome, expected.size, time.monotonic() - start)

    def head(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(key, st.st_size, {})

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def verify(self, key: str, expected: Digests) -> list[str]:
        path = self._path(key)
        try:
            found = hash_file(path)
        except FileNotFoundError:
            return [f"{key}: missing from {self.url}"]
        return compare(key, expected, found)

    def delete(self, key: str) -> None:
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        parent = path.parent
        while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent

    def fetch(self, key: str, target: Sink, max_bytes: int) -> int:
        path = self._path(key)
        try:
            with open(path, "rb") as src:
                size = 0
                while chunk := src.read(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise ArtifactError(f"{self.url}: {key} is larger than {max_bytes} bytes")
                    target.write(chunk)
        except FileNotFoundError as e:
            raise ArtifactError(f"{self.url}: {key} is missing") from e
        return size

    def iter_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return
        for dirpath, _dirs, files in os.walk(base):
            for name in sorted(files):
                p = Path(dirpath) / name
                yield ObjectInfo(p.relative_to(self.root).as_posix(), p.stat().st_size, {})

    def public_url(self, key: str) -> str:
        return public_url(self.public_base, check_key(key))

    def key_for_url(self, url: str) -> str | None:
        return key_for_url(self.public_base, url)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
