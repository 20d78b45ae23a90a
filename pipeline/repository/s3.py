"""A repository on any S3 API (AWS, Ceph RGW, MinIO, moto) through boto3.

The upload protocol (security-and-reliability.md §3.3):

1. read the file once, hashing it (sha256 + sha512 for the catalogue, sha256 per part for S3);
2. small files: one ``PutObject(IfNoneMatch="*")``; big ones: multipart, each part journalled so a
   killed run resumes (parts are checked against ``ListParts`` before they are trusted);
3. ``CompleteMultipartUpload(IfNoneMatch="*")``: nothing is ever visible at the final key before all
   bytes are there, and an existing object is never replaced (412: prove the existing one instead);
4. verify what landed: size, the store's checksum where it keeps one, and a full read-back hash
   (some stores, moto among them, never validate checksums on upload, so only the client's own
   hash of the stored bytes proves them);
5. one retry layer: botocore's own (see ``_call``), with ``VMI_UPLOAD_ATTEMPTS`` attempts per request.
"""

from __future__ import annotations

import base64
import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
import botocore.exceptions as bce
from botocore.config import Config

from pipeline.errors import ArtifactError, ConfigError, UploadError
from pipeline.fsutil import Digests
from pipeline.log import log
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
from pipeline.repository.journal import PartRecord, UploadRecord
from pipeline.repository.progress import Progress, progress_bar

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

T = TypeVar("T")

# What botocore's standard retry mode leaves alone and we retry (see S3Repository._call): the store
# answering 400 because the bytes it received do not match the checksum sent with them. The request
# body is in memory, so sending it again is safe, and botocore treats every 400 as final.
_DAMAGED_CODES = {"BadDigest", "XAmzContentSHA256Mismatch", "InvalidDigest"}
# Failures that end a request once botocore is done with it (retried or not): mapped to UploadError.
_NETWORK_EXC = (
    bce.ConnectionError,  # resets, refused, closed, timeouts (EndpointConnectionError, ReadTimeoutError, ...)
    bce.ResponseStreamingError,
    bce.IncompleteReadError,
)
_READ_CHUNK = 4 * 1024 * 1024


class _BodyCut(Exception):
    """A response body broke off after botocore had returned the response (outside its retries)."""


def _status(e: bce.ClientError) -> int:
    return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _code(e: bce.ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _sent(e: BaseException) -> int:
    """How many requests botocore sent for the call that raised ``e`` (1 when it does not say)."""
    if isinstance(e, bce.ClientError):
        return 1 + int(e.response.get("ResponseMetadata", {}).get("RetryAttempts", 0))
    return 1


def is_ours_to_retry(e: BaseException) -> bool:
    """A failure botocore does not retry, but that sending the same request again can cure."""
    if isinstance(e, _BodyCut):
        return True
    return isinstance(e, bce.ClientError) and _code(e) in _DAMAGED_CODES


def _log_failed_attempt(
    event_name: str, context: dict[str, Any], exception: Exception | None, parsed_response: Any, **_: Any
) -> None:
    """botocore retries silently: say which attempt of which request failed, and why (a warning)."""
    retries = context.get("retries", {})
    attempt, most = retries.get("attempt", 1), retries.get("max", "?")
    if exception is not None:
        why = f"{type(exception).__name__}: {exception}"
    else:
        meta = (parsed_response or {}).get("ResponseMetadata", {})
        status = int(meta.get("HTTPStatusCode", 0))
        code = str((parsed_response or {}).get("Error", {}).get("Code", ""))
        if status < 500 and status != 429 and code not in ("SlowDown", "RequestTimeout", "Throttling"):
            return  # success, or an answer that is not transient (404 on a HEAD is normal)
        why = f"HTTP {status} {code}".rstrip()
    log.warning("S3 %s failed on attempt %s of %s: %s", event_name.rsplit(".", 1)[-1], attempt, most, why)


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


class S3Repository:
    def __init__(
        self,
        bucket: str,
        prefix: str,
        public_base: str,
        endpoint_url: str | None = None,
        profile: str | None = None,
        tuning: UploadTuning | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self.public_base = public_base
        self.tuning = tuning or UploadTuning()
        config = Config(
            # boto3 >= 1.36 sends CRC checksums by default, which many S3-compatible stores reject
            # (XAmzContentSHA256Mismatch); we send an explicit SHA-256 where it matters instead.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            # the one retry layer for what HTTP and S3 report as transient: see _call
            retries={"mode": "standard", "total_max_attempts": self.tuning.attempts},
            s3={"addressing_style": "path"} if endpoint_url else None,
            connect_timeout=10,
            read_timeout=120,
            max_pool_connections=max(10, self.tuning.concurrency * 2),
        )
        try:
            session = boto3.Session(profile_name=profile) if profile else boto3.Session()
        except bce.ProfileNotFound as e:
            raise ConfigError(f"invoke.yaml: vmi.s3_profile: profile {profile!r} not found in ~/.aws/config") from e
        self.client: S3Client = session.client("s3", endpoint_url=endpoint_url, config=config)
        self.client.meta.events.register("response-received.s3", _log_failed_attempt)

    # -- helpers -------------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one request; errors name it. One retry layer per failure, never one stacked on another.

        botocore's standard retry mode retries every request itself, with exponential backoff and
        jitter, up to ``tuning.attempts`` (``VMI_UPLOAD_ATTEMPTS``) attempts in all: connection
        errors (refused, reset, closed, timed out), HTTP 500/502/503/504, 429 and throttling codes
        (``SlowDown``), ``RequestTimeout``; its retry quota stops a storm of retries against a store
        that is down. What it gives up on is final here: we do not wrap its retries in ours.

        What botocore never retries, and we do, up to the same number of attempts in all
        (botocore's own attempts for the same call count against it), after ``tuning.backoff``
        seconds doubled each time, with jitter:
        - the store refusing the bytes it received (``BadDigest``, ``XAmzContentSHA256Mismatch``:
          HTTP 400, damaged on the way; the body is in memory, sending it again is safe);
        - a response body that breaks off after botocore returned the response (the read-back of
          ``verify``: botocore's retries end when the headers arrive).
        Not retried anywhere: a read-back that completes with the wrong hash. That is the stored
        object, not the transfer; ``verify`` reports it and publish removes the object.
        """
        used = 0
        while True:
            try:
                return fn()
            except (bce.ClientError, _BodyCut) as e:
                used += _sent(e)
                if not is_ours_to_retry(e) or used >= self.tuning.attempts:
                    raise
                wait_s = self.tuning.backoff * 2 ** (used - 1) * random.uniform(0.5, 1.0)  # noqa: S311
                log.warning("%s failed (%s); retry in %.1fs (%d of %d attempts used)", what, e, wait_s, used,
                            self.tuning.attempts)  # fmt: skip
                time.sleep(wait_s)
            except bce.NoCredentialsError as e:
                raise UploadError(
                    f"{self.url}: no S3 credentials",
                    hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or vmi.s3_profile (VMI_S3_PROFILE)",
                ) from e

    def _failed(self, what: str, e: Exception) -> UploadError:
        if isinstance(e, bce.ClientError):
            return UploadError(f"{self.url}: {what} failed: {_code(e)} (HTTP {_status(e)}): {e}")
        return UploadError(f"{self.url}: {what} failed: {e}")

    def preflight(self) -> None:
        """The bucket exists and answers, before anything is read or sent."""
        try:
            self._call(f"HeadBucket {self.bucket}", lambda: self.client.head_bucket(Bucket=self.bucket))
        except bce.ClientError as e:
            hint = "create the bucket, or fix vmi.repository / vmi.s3_endpoint_url"
            raise UploadError(f"{self.url}: bucket {self.bucket!r} is not reachable: {_code(e)}", hint=hint) from e
        except _NETWORK_EXC as e:
            raise UploadError(f"{self.url}: cannot reach the S3 endpoint: {e}", hint="check vmi.s3_endpoint_url") from e

    # -- the protocol --------------------------------------------------------------------------

    def put(self, key: str, path: Path, expected: Digests, journal: UploadJournal | None = None) -> PutResult:
        full = self._key(key)
        start = time.monotonic()
        try:
            record, present = (
                (None, {})
                if expected.size < self.tuning.multipart_threshold
                else self._resume(key, full, expected, journal)
            )
            if record is None and self.head(key) is not None:
                prove_present(self, key, expected)
                return PutResult(key, PutOutcome.PRESENT, expected.size, time.monotonic() - start)
            if expected.size < self.tuning.multipart_threshold:
                outcome = self._put_single(key, full, path, expected)
            else:
                outcome = self._put_multipart(key, full, path, expected, record, present, journal)
        except (bce.ClientError, *_NETWORK_EXC) as e:
            raise self._failed(f"upload of {key}", e) from e
        return PutResult(key, outcome, expected.size, time.monotonic() - start)

    def _metadata(self, expected: Digests) -> dict[str, str]:
        return {"sha256": expected.sha256, "sha512": expected.sha512}

    def _put_single(self, key: str, full: str, path: Path, expected: Digests) -> PutOutcome:
        with progress_bar(expected.size, Path(key).name, self.tuning.progress) as bar:
            body = path.read_bytes()
            check_source(path, expected, _digests(body))
            checksum = b64(hashlib.sha256(body).digest())
            try:
                self._call(
                    f"PutObject {key}",
                    lambda: self.client.put_object(
                        Bucket=self.bucket,
                        Key=full,
                        Body=body,
                        IfNoneMatch="*",
                        ChecksumSHA256=checksum,
                        Metadata=self._metadata(expected),
                    ),
                )
            except bce.ClientError as e:
                if _status(e) not in (409, 412):
                    raise
                # 412: the key exists (another publisher, or our own earlier attempt whose reply was lost)
                prove_present(self, key, expected)
                return PutOutcome.PRESENT
            bar.update(len(body))
        return PutOutcome.UPLOADED

    def _put_multipart(
        self,
        key: str,
        full: str,
        path: Path,
        expected: Digests,
        record: UploadRecord | None,
        present: dict[int, PartRecord],
        journal: UploadJournal | None,
    ) -> PutOutcome:
        resumed = bool(present)
        if record is None:
            created = self._call(
                f"CreateMultipartUpload {key}",
                lambda: self.client.create_multipart_upload(
                    Bucket=self.bucket, Key=full, ChecksumAlgorithm="SHA256", Metadata=self._metadata(expected)
                ),
            )
            upload_id, part_size = created["UploadId"], self.tuning.part_size_for(expected.size)
            record = (
                journal.start(key, upload_id, part_size, expected.size, expected.sha256)
                if journal is not None
                else UploadRecord(key, upload_id, part_size, expected.size, expected.sha256, {})
            )
        else:
            log.info("%s: resuming upload %s: %d part(s) already there", key, record.upload_id[:12], len(present))
        parts = self._send_parts(key, full, path, expected, record, present, journal)
        try:
            self._call(
                f"CompleteMultipartUpload {key}",
                lambda: self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=full,
                    UploadId=record.upload_id,
                    IfNoneMatch="*",
                    MultipartUpload={
                        "Parts": [{"PartNumber": p.number, "ETag": p.etag, "ChecksumSHA256": p.sha256} for p in parts]
                    },
                ),
            )
        except bce.ClientError as e:
            if _status(e) == 409 and _code(e) == "ConditionalRequestConflict":
                # a concurrent writer raced us on the same key: S3 asks for a fresh upload
                self._abort(key, full, record, journal)
                return self._put_multipart(key, full, path, expected, None, {}, journal)
            if _status(e) not in (404, 412):
                raise
            # 412: the key already holds an object; 404 NoSuchUpload: an earlier attempt of ours completed
            # it but the reply was lost (or the upload was aborted under us: then start again).
            self._abort(key, full, record, journal)
            if _status(e) == 404 and self.head(key) is None:
                return self._put_multipart(key, full, path, expected, None, {}, journal)
            prove_present(self, key, expected)
            return PutOutcome.PRESENT
        if journal is not None:
            journal.finish(key)
        return PutOutcome.RESUMED if resumed else PutOutcome.UPLOADED

    def _resume(
        self, key: str, full: str, expected: Digests, journal: UploadJournal | None
    ) -> tuple[UploadRecord | None, dict[int, PartRecord]]:
        """The journalled upload of ``key`` and the parts S3 confirms it holds, if it can be resumed."""
        record = journal.get(key) if journal is not None else None
        if record is None or journal is None:
            return None, {}
        if record.size != expected.size or record.sha256 != expected.sha256:
            log.info("%s: the file changed since the journalled upload; starting again", key)
            self._abort(key, full, record, journal)
            return None, {}

        def list_parts() -> dict[int, tuple[str, int]]:
            found = {}
            paginator = self.client.get_paginator("list_parts")
            for page in paginator.paginate(Bucket=self.bucket, Key=full, UploadId=record.upload_id):
                for p in page.get("Parts", []):
                    found[p["PartNumber"]] = (p["ETag"], p["Size"])
            return found

        try:
            server = self._call(f"ListParts {key}", list_parts)
        except bce.ClientError as e:
            if _code(e) != "NoSuchUpload" and _status(e) != 404:
                raise
            # completed by the killed run (then the object exists and must prove itself) or aborted
            log.info("%s: upload %s is no longer open", key, record.upload_id[:12])
            journal.finish(key)
            return None, {}
        present = {
            n: p for n, p in record.parts.items() if n in server and server[n] == (p.etag, p.size)
        }  # parts journalled AND confirmed by the store; anything else is sent again
        return record, present

    def _abort(self, key: str, full: str, record: UploadRecord, journal: UploadJournal | None) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=record.upload_id)
        except bce.ClientError as e:
            log.debug("abort of %s upload %s: %s", key, record.upload_id, e)
        if journal is not None:
            journal.finish(key)

    def _send_parts(
        self,
        key: str,
        full: str,
        path: Path,
        expected: Digests,
        record: UploadRecord,
        present: dict[int, PartRecord],
        journal: UploadJournal | None,
    ) -> list[PartRecord]:
        """Read the file once, in part-sized pieces: hash each, send those S3 does not hold yet (in
        parallel, a bounded number in flight), and only then compare the whole-file hash with the
        manifest. A changed file aborts the upload, so nothing appears at the key."""
        sha256, sha512, size = hashlib.sha256(), hashlib.sha512(), 0
        done: dict[int, PartRecord] = {}
        slots = threading.Semaphore(self.tuning.concurrency)
        futures: list[Future[PartRecord]] = []
        with (
            progress_bar(expected.size, Path(key).name, self.tuning.progress) as bar,
            ThreadPoolExecutor(self.tuning.concurrency, thread_name_prefix="upload") as pool,
            open(path, "rb") as f,
        ):
            number = 0
            while True:
                data = _read_part(f, record.part_size)
                if not data and number > 0:
                    break
                number += 1
                sha256.update(data)
                sha512.update(data)
                size += len(data)
                part_sha = b64(hashlib.sha256(data).digest())
                old = present.get(number)
                if old is not None and old.sha256 == part_sha and old.size == len(data):
                    done[number] = old
                    bar.update(len(data))
                    continue
                if any(sent.done() and sent.exception() for sent in futures):  # stop reading once a part failed
                    break
                slots.acquire()
                fut = pool.submit(self._send_part, key, full, record.upload_id, number, data, part_sha, bar, journal)
                fut.add_done_callback(lambda _f: slots.release())
                futures.append(fut)
                if len(data) < record.part_size:
                    break
            wait(futures, return_when=FIRST_EXCEPTION)
            for fut in futures:
                error = fut.exception()
                if error is not None:
                    for other in futures:
                        other.cancel()
                    raise error
                part = fut.result()
                done[part.number] = part
        got = Digests(size, sha256.hexdigest(), sha512.hexdigest())
        try:
            check_source(path, expected, got)
        except UploadError:
            self._abort(key, full, record, journal)
            raise
        return [done[n] for n in sorted(done)]

    def _send_part(
        self,
        key: str,
        full: str,
        upload_id: str,
        number: int,
        data: bytes,
        part_sha: str,
        bar: Progress,
        journal: UploadJournal | None,
    ) -> PartRecord:
        reply = self._call(
            f"UploadPart {key} #{number}",
            lambda: self.client.upload_part(
                Bucket=self.bucket,
                Key=full,
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
                ChecksumSHA256=part_sha,
            ),
        )
        part = PartRecord(number, len(data), reply["ETag"], part_sha)
        if journal is not None:
            journal.part_done(key, part)
        bar.update(len(data))
        return part

    def head(self, key: str) -> ObjectInfo | None:
        try:
            reply = self._call(
                f"HeadObject {key}",
                lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(key), ChecksumMode="ENABLED"),
            )
        except bce.ClientError as e:
            if _status(e) == 404:
                return None
            raise self._failed(f"HeadObject {key}", e) from e
        checksum, etag = reply.get("ChecksumSHA256"), reply.get("ETag", "").strip('"')
        if checksum and "-" in etag and "-" not in checksum:  # some stores drop the "-N" of a composite on HEAD
            checksum += "-" + etag.rsplit("-", 1)[1]
        return ObjectInfo(key, reply["ContentLength"], dict(reply.get("Metadata", {})), checksum)

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def verify(self, key: str, expected: Digests) -> list[str]:
        """Size and checksums from the store, then a full read-back hash of the stored bytes."""
        info = self.head(key)
        if info is None:
            return [f"{key}: missing from {self.url}"]
        problems = []
        if info.size != expected.size:
            return [f"{key}: size is {info.size}, expected {expected.size}"]
        recorded = info.metadata.get("sha256")
        if recorded is not None and recorded != expected.sha256:
            problems.append(f"{key}: recorded sha256 is {recorded}, expected {expected.sha256}")
        whole = b64(bytes.fromhex(expected.sha256))
        if info.checksum_sha256 and "-" not in info.checksum_sha256 and info.checksum_sha256 != whole:
            problems.append(f"{key}: the store's sha256 is {info.checksum_sha256}, expected {whole}")
        try:
            found = self._call(f"GetObject {key}", lambda: self._hash_object(key))
        except (bce.ClientError, _BodyCut, *_NETWORK_EXC) as e:
            raise self._failed(f"GetObject {key}", e) from e
        return problems + compare(key, expected, found)

    def _hash_object(self, key: str) -> Digests:
        body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        sha256, sha512, size = hashlib.sha256(), hashlib.sha512(), 0
        try:
            for chunk in body.iter_chunks(_READ_CHUNK):
                sha256.update(chunk)
                sha512.update(chunk)
                size += len(chunk)
        except _NETWORK_EXC as e:  # after botocore returned the response: ours to retry (see _call)
            raise _BodyCut(f"the body broke off after {size} bytes: {e}") from e
        finally:
            body.close()
        return Digests(size, sha256.hexdigest(), sha512.hexdigest())

    def delete(self, key: str) -> None:
        try:
            self._call(f"DeleteObject {key}", lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(key)))
        except bce.ClientError as e:
            raise self._failed(f"DeleteObject {key}", e) from e

    def fetch(self, key: str, target: Sink, max_bytes: int) -> int:
        what = f"GetObject {key}"
        try:
            reply = self._call(what, lambda: self.client.get_object(Bucket=self.bucket, Key=self._key(key)))
        except bce.ClientError as e:
            if _status(e) == 404:
                raise ArtifactError(f"{self.url}: {key} is missing") from e
            raise self._failed(what, e) from e
        body, size = reply["Body"], 0
        try:
            if reply.get("ContentLength", 0) > max_bytes:
                raise ArtifactError(f"{self.url}: {key} is larger than {max_bytes} bytes")
            for chunk in body.iter_chunks(_READ_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise ArtifactError(f"{self.url}: {key} is larger than {max_bytes} bytes")
                target.write(chunk)
        except _NETWORK_EXC as e:
            raise self._failed(what, _BodyCut(f"the body broke off after {size} bytes: {e}")) from e
        finally:
            body.close()
        return size

    def iter_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = f"{self.prefix}/" if self.prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=base + prefix):
            for obj in page.get("Contents", []):
                yield ObjectInfo(obj["Key"][len(base) :], obj["Size"], {})

    def public_url(self, key: str) -> str:
        return public_url(self.public_base, check_key(key))

    def key_for_url(self, url: str) -> str | None:
        return key_for_url(self.public_base, url)


def _read_part(f: Any, size: int) -> bytes:
    chunks, left = [], size
    while left > 0:
        chunk = f.read(min(left, _READ_CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _digests(data: bytes) -> Digests:
    return Digests(len(data), hashlib.sha256(data).hexdigest(), hashlib.sha512(data).hexdigest())
