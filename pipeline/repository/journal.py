"""The resume journal of multipart uploads: a small JSON file beside the version folder.

It records, per key, the upload id, the part size and each part done with its checksum, so that
a publish killed half-way resumes where it stopped instead of sending everything again. It is
written atomically after every change (a kill leaves the previous or the next state, never a torn
file) and deleted when the version is published. It is a hint, not the truth: the uploader checks
every recorded part against ``ListParts`` before trusting it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.fsutil import write_text_atomic
from pipeline.log import log

JOURNAL_FORMAT = 1


@dataclass(frozen=True)
class PartRecord:
    number: int
    size: int
    etag: str
    sha256: str  # base64, as S3's ChecksumSHA256


@dataclass(frozen=True)
class UploadRecord:
    key: str
    upload_id: str
    part_size: int
    size: int  # of the whole file
    sha256: str  # hex digest of the whole file, so a changed file is never resumed
    parts: dict[int, PartRecord]


class UploadJournal:
    """Multipart uploads in progress for one version, persisted in ``path``; safe across threads."""

    def __init__(self, path: Path, repository: str) -> None:
        self.path = path
        self.repository = repository
        self._lock = threading.Lock()
        self._uploads: dict[str, UploadRecord] = {}
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, json.JSONDecodeError) as e:
            log.warning("%s: unreadable upload journal (%s); starting afresh", self.path, e)
            return
        if data.get("format") != JOURNAL_FORMAT or data.get("repository") != self.repository:
            log.info("%s: journal is for %s; starting afresh", self.path, data.get("repository"))
            return
        for key, u in data.get("uploads", {}).items():
            parts = {int(n): PartRecord(int(n), p["size"], p["etag"], p["sha256"]) for n, p in u["parts"].items()}
            self._uploads[key] = UploadRecord(key, u["upload_id"], u["part_size"], u["size"], u["sha256"], parts)

    def _save(self) -> None:
        if not self._uploads:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        doc: dict[str, Any] = {"format": JOURNAL_FORMAT, "repository": self.repository, "uploads": {}}
        for key, u in sorted(self._uploads.items()):
            doc["uploads"][key] = {
                "upload_id": u.upload_id,
                "part_size": u.part_size,
                "size": u.size,
                "sha256": u.sha256,
                "parts": {
                    str(n): {"size": p.size, "etag": p.etag, "sha256": p.sha256} for n, p in sorted(u.parts.items())
                },
            }
        write_text_atomic(self.path, json.dumps(doc, indent=1) + "\n")

    def get(self, key: str) -> UploadRecord | None:
        with self._lock:
            return self._uploads.get(key)

    def start(self, key: str, upload_id: str, part_size: int, size: int, sha256: str) -> UploadRecord:
        with self._lock:
            record = UploadRecord(key, upload_id, part_size, size, sha256, {})
            self._uploads[key] = record
            self._save()
            return record

    def part_done(self, key: str, part: PartRecord) -> None:
        with self._lock:
            self._uploads[key].parts[part.number] = part
            self._save()

    def forget_part(self, key: str, number: int) -> None:
        with self._lock:
            self._uploads[key].parts.pop(number, None)
            self._save()

    def finish(self, key: str) -> None:
        """Drop ``key``: its upload completed or was abandoned."""
        with self._lock:
            if self._uploads.pop(key, None) is not None:
                self._save()

    def keys(self) -> list[str]:
        with self._lock:
            return sorted(self._uploads)


@contextlib.contextmanager
def exclusive(lock_path: Path, what: str) -> Iterator[None]:
    """Hold an advisory lock on ``lock_path`` so that two publishes of one version on this machine
    take turns (the second then finds the work done) instead of racing on the journal."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another publish of %s to finish (lock %s)", what, lock_path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
