"""Repository backends on real parts: a folder, and moto's S3 server through boto3 (plus a faulty proxy)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import ConfigError, UploadError
from pipeline.fsutil import Digests, hash_file
from pipeline.repository import PutOutcome, UploadJournal, UploadTuning, open_repository
from pipeline.repository.s3 import S3Repository

from .conftest import MiB, _pseudo_random, make_settings
from .faultproxy import FaultProxy, Rule, any_request, complete_upload, get_object, put_object, upload_part

TUNING = UploadTuning(part_size=5 * MiB, multipart_threshold=5 * MiB, concurrency=2, backoff=0.01, progress=False)


def s3_repo(tmp_path: Path, bucket: str, endpoint: str, tuning: UploadTuning = TUNING) -> S3Repository:
    repo = open_repository(make_settings(tmp_path, f"s3://{bucket}/pub", endpoint), tuning)
    assert isinstance(repo, S3Repository)
    return repo


def a_file(tmp_path: Path, name: str, size: int, seed: str = "") -> tuple[Path, Digests]:
    path = tmp_path / name
    path.write_bytes(_pseudo_random(size, seed + name))
    return path, hash_file(path)


def open_uploads(s3: Any, bucket: str) -> list[str]:
    return [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def keys(s3: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


# -- choosing a backend -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://host/x", "unsupported scheme 'ftp'"),
        ("s3:///prefix", "no bucket"),
        ("file://otherhost/x", "needs an absolute path"),
    ],
)
def test_bad_repository_urls_name_the_setting(tmp_path: Path, url: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        open_repository(make_settings(tmp_path, url))
    assert "vmi.repository" in str(err.value) and message in str(err.value)


@pytest.mark.parametrize("key", ["../x", "a/../b", ".hidden/x", "a//b", "/abs", "a/.x.partial", ""])
def test_keys_that_escape_or_hide_are_refused(tmp_path: Path, key: str) -> None:
    repo = open_repository(make_settings(tmp_path, (tmp_path / "repo").as_uri()))
    src, digests = a_file(tmp_path, "f", 10)
    with pytest.raises(UploadError, match="not valid"):
        repo.put(key, src, digests)
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").rglob("*"))


# -- the file backend ---------------------------------------------------------------------------


def test_file_backend_put_is_immutable_and_verifiable(tmp_path: Path) -> None:
    repo = open_repository(make_settings(tmp_path, (tmp_path / "repo").as_uri()), TUNING)
    src, digests = a_file(tmp_path, "a.qcow2", 3 * MiB)
    first = repo.put("app/1.0/a.qcow2", src, digests)
    assert first.outcome is PutOutcome.UPLOADED
    final = tmp_path / "repo/app/1.0/a.qcow2"
    assert hash_file(final) == digests and oct(final.stat().st_mode & 0o777) == "0o444"
    assert repo.put("app/1.0/a.qcow2", src, digests).outcome is PutOutcome.PRESENT
    assert repo.verify("app/1.0/a.qcow2", digests) == []
    assert repo.public_url("app/1.0/a.qcow2") == "http://127.0.0.1:8080/repo/app/1.0/a.qcow2"
    assert repo.key_for_url("http://127.0.0.1:8080/repo/app/1.0/a.qcow2") == "app/1.0/a.qcow2"
    assert repo.key_for_url("http://elsewhere/app/1.0/a.qcow2") is None

    other, other_digests = a_file(tmp_path, "b.qcow2", 3 * MiB)
    with pytest.raises(UploadError, match="already exists with different content"):
        repo.put("app/1.0/a.qcow2", other, other_digests)
    assert hash_file(final) == digests  # never overwritten
    assert [o.key for o in repo.iter_objects()] == ["app/1.0/a.qcow2"]

    repo.delete("app/1.0/a.qcow2")
    assert not repo.exists("app/1.0/a.qcow2") and not (tmp_path / "repo/app").exists()
    assert repo.verify("app/1.0/a.qcow2", digests) == [f"app/1.0/a.qcow2: missing from {repo.url}"]


def test_file_backend_a_changed_source_leaves_nothing_behind(tmp_path: Path) -> None:
    repo = open_repository(make_settings(tmp_path, (tmp_path / "repo").as_uri()), TUNING)
    src, digests = a_file(tmp_path, "a.ova", 2 * MiB)
    src.write_bytes(src.read_bytes()[:-1] + b"\0")  # one byte differs from what the manifest says
    with pytest.raises(UploadError, match="changed since it was packaged"):
        repo.put("app/1.0/a.ova", src, digests)
    assert list((tmp_path / "repo").rglob("*")) == [tmp_path / "repo/app", tmp_path / "repo/app/1.0"]


def test_file_backend_verify_sees_replaced_bytes(tmp_path: Path) -> None:
    repo = open_repository(make_settings(tmp_path, (tmp_path / "repo").as_uri()), TUNING)
    src, digests = a_file(tmp_path, "a.ova", 1 * MiB)
    repo.put("app/1.0/a.ova", src, digests)
    final = tmp_path / "repo/app/1.0/a.ova"
    final.chmod(0o644)
    final.write_bytes(b"\1" * digests.size)
    problems = repo.verify("app/1.0/a.ova", digests)
    assert len(problems) == 2 and "sha256 is" in problems[0] and "sha512 is" in problems[1]


# -- the S3 backend -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1 * MiB, 12 * MiB + 7], ids=["single-put", "multipart"])
def test_s3_put_verify_and_no_overwrite(tmp_path: Path, s3: Any, bucket: str, moto_endpoint: str, size: int) -> None:
    repo = s3_repo(tmp_path, bucket, moto_endpoint)
    src, digests = a_file(tmp_path, "a.qcow2", size)
    journal = UploadJournal(tmp_path / "journal.json", repo.url)
    assert repo.put("app/1.0/a.qcow2", src, digests, journal).outcome is PutOutcome.UPLOADED
    assert keys(s3, bucket) == ["pub/app/1.0/a.qcow2"]
    assert s3.get_object(Bucket=bucket, Key="pub/app/1.0/a.qcow2")["Body"].read() == src.read_bytes()
    info = repo.head("app/1.0/a.qcow2")
    assert info is not None and info.size == size and info.metadata["sha256"] == digests.sha256
    assert repo.verify("app/1.0/a.qcow2", digests) == []
    assert not (tmp_path / "journal.json").exists()  # finished uploads leave no journal

    assert repo.put("app/1.0/a.qcow2", src, digests, journal).outcome is PutOutcome.PRESENT
    other, other_digests = a_file(tmp_path, "b.qcow2", size, seed="other")
    with pytest.raises(UploadError, match="already exists with different content"):
        repo.put("app/1.0/a.qcow2", other, other_digests, journal)
    assert s3.get_object(Bucket=bucket, Key="pub/app/1.0/a.qcow2")["Body"].read() == src.read_bytes()
    assert open_uploads(s3, bucket) == []


def test_s3_multipart_sends_sha256_per_part_and_the_store_agrees(
    tmp_path: Path, s3: Any, bucket: str, moto_endpoint: str
) -> None:
    repo = s3_repo(tmp_path, bucket, moto_endpoint)
    src, digests = a_file(tmp_path, "a.ova", 11 * MiB)
    repo.put("app/1.0/a.ova", src, digests)
    info = repo.head("app/1.0/a.ova")
    # a composite SHA-256 (checksum of the three part checksums) proves each part was sent with its hash
    assert info is not None and info.checksum_sha256 is not None and info.checksum_sha256.endswith("-3")
    assert s3.head_object(Bucket=bucket, Key="pub/app/1.0/a.ova")["ETag"].endswith('-3"')


@pytest.mark.parametrize("size", [2 * MiB, 11 * MiB], ids=["single-put", "multipart"])
def test_s3_a_changed_source_never_appears_at_the_key(
    tmp_path: Path, s3: Any, bucket: str, moto_endpoint: str, size: int
) -> None:
    repo = s3_repo(tmp_path, bucket, moto_endpoint)
    src, digests = a_file(tmp_path, "a.ova", size)
    src.write_bytes(b"\0" + src.read_bytes()[1:])
    journal = UploadJournal(tmp_path / "journal.json", repo.url)
    with pytest.raises(UploadError, match="changed since it was packaged"):
        repo.put("app/1.0/a.ova", src, digests, journal)
    assert keys(s3, bucket) == [] and open_uploads(s3, bucket) == []
    assert journal.keys() == []


def test_s3_verify_reads_back_the_bytes(tmp_path: Path, s3: Any, bucket: str, moto_endpoint: str) -> None:
    """Metadata and size can look right while the bytes are not: only the read-back hash sees it."""
    repo = s3_repo(tmp_path, bucket, moto_endpoint)
    src, digests = a_file(tmp_path, "a.ova", 1 * MiB)
    repo.put("app/1.0/a.ova", src, digests)
    s3.put_object(
        Bucket=bucket,
        Key="pub/app/1.0/a.ova",
        Body=b"\1" * digests.size,
        Metadata={"sha256": digests.sha256, "sha512": digests.sha512},
    )
    problems = repo.verify("app/1.0/a.ova", digests)
    assert [p.split(" is ")[0] for p in problems] == ["app/1.0/a.ova: sha256", "app/1.0/a.ova: sha512"]
    s3.delete_object(Bucket=bucket, Key="pub/app/1.0/a.ova")
    assert repo.verify("app/1.0/a.ova", digests) == [f"app/1.0/a.ova: missing from s3://{bucket}/pub"]


def test_s3_missing_bucket_is_a_clear_error(tmp_path: Path, moto_endpoint: str) -> None:
    repo = s3_repo(tmp_path, "no-such-bucket-here", moto_endpoint)
    with pytest.raises(UploadError, match="bucket 'no-such-bucket-here' is not reachable") as err:
        repo.preflight()
    assert err.value.hint and "create the bucket" in err.value.hint


# -- faults -------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["fail", "reset"])
def test_s3_transient_faults_are_retried(tmp_path: Path, s3: Any, bucket: str, proxy: FaultProxy, action: str) -> None:
    """Every kind of request fails once (503 or a reset connection); the upload still lands, once."""
    for match in (upload_part, complete_upload, put_object, get_object):
        proxy.add(Rule(match, action, times=2))
    repo = s3_repo(tmp_path, bucket, proxy.url)
    big, big_digests = a_file(tmp_path, "a.ova", 11 * MiB)
    small, small_digests = a_file(tmp_path, "SHA256SUMS", 300)
    assert repo.put("app/1.0/a.ova", big, big_digests).outcome is PutOutcome.UPLOADED
    assert repo.put("app/1.0/SHA256SUMS", small, small_digests).outcome is PutOutcome.UPLOADED
    assert repo.verify("app/1.0/a.ova", big_digests) == []
    failed = 503 if action == "fail" else 0
    assert proxy.statuses(upload_part).count(failed) == 2 and proxy.statuses(complete_upload).count(failed) == 2
    assert sorted(keys(s3, bucket)) == ["pub/app/1.0/SHA256SUMS", "pub/app/1.0/a.ova"]
    assert open_uploads(s3, bucket) == []


def test_s3_gives_up_after_the_attempts_with_a_clear_error(tmp_path: Path, bucket: str, proxy: FaultProxy) -> None:
    proxy.add(Rule(put_object, "fail", times=1000))
    repo = s3_repo(tmp_path, bucket, proxy.url, UploadTuning(attempts=3, backoff=0.01, progress=False))
    small, digests = a_file(tmp_path, "SHA256SUMS", 300)
    with pytest.raises(UploadError, match=r"upload of app/1.0/SHA256SUMS failed: .*503"):
        repo.put("app/1.0/SHA256SUMS", small, digests)
    # one retry layer (botocore's): VMI_UPLOAD_ATTEMPTS requests in all, no loop of ours around them
    assert proxy.statuses(put_object) == [503] * 3


def test_s3_damaged_bytes_are_sent_again_within_the_same_attempts(
    tmp_path: Path, s3: Any, bucket: str, proxy: FaultProxy
) -> None:
    """The store refusing the bytes it got (HTTP 400 BadDigest) is final for botocore, not for us."""
    proxy.add(Rule(put_object, "fail", times=2, status=400, code="BadDigest"))
    proxy.add(Rule(upload_part, "fail", times=1, status=400, code="XAmzContentSHA256Mismatch"))
    repo = s3_repo(tmp_path, bucket, proxy.url, UploadTuning(attempts=3, backoff=0.01, progress=False))
    small, small_digests = a_file(tmp_path, "SHA256SUMS", 300)
    assert repo.put("app/1.0/SHA256SUMS", small, small_digests).outcome is PutOutcome.UPLOADED
    assert proxy.statuses(put_object) == [400, 400, 200]
    big, big_digests = a_file(tmp_path, "a.ova", 6 * MiB)
    repo_mp = s3_repo(tmp_path, bucket, proxy.url, TUNING)
    assert repo_mp.put("app/1.0/a.ova", big, big_digests).outcome is PutOutcome.UPLOADED
    assert proxy.statuses(upload_part) == [400, 200, 200]
    assert repo.verify("app/1.0/SHA256SUMS", small_digests) == []
    assert repo_mp.verify("app/1.0/a.ova", big_digests) == []


def test_s3_damaged_bytes_share_the_attempts_with_botocore(tmp_path: Path, bucket: str, proxy: FaultProxy) -> None:
    """A 503 (botocore's retry) then damaged bytes twice (ours): 3 attempts in all, then a clear error."""
    proxy.add(Rule(put_object, "fail", times=1))
    proxy.add(Rule(put_object, "fail", times=1000, status=400, code="BadDigest"))
    repo = s3_repo(tmp_path, bucket, proxy.url, UploadTuning(attempts=3, backoff=0.01, progress=False))
    small, digests = a_file(tmp_path, "SHA256SUMS", 300)
    with pytest.raises(UploadError, match=r"upload of app/1.0/SHA256SUMS failed: BadDigest \(HTTP 400\)"):
        repo.put("app/1.0/SHA256SUMS", small, digests)
    assert proxy.statuses(put_object) == [503, 400, 400]


def test_s3_other_client_errors_are_not_retried(tmp_path: Path, bucket: str, proxy: FaultProxy) -> None:
    proxy.add(Rule(put_object, "fail", times=1000, status=403, code="AccessDenied"))
    repo = s3_repo(tmp_path, bucket, proxy.url, UploadTuning(attempts=5, backoff=0.01, progress=False))
    small, digests = a_file(tmp_path, "SHA256SUMS", 300)
    with pytest.raises(UploadError, match=r"upload of app/1.0/SHA256SUMS failed: AccessDenied \(HTTP 403\)"):
        repo.put("app/1.0/SHA256SUMS", small, digests)
    assert proxy.statuses(put_object) == [403]


def test_s3_a_read_back_cut_short_is_read_again(tmp_path: Path, s3: Any, bucket: str, proxy: FaultProxy) -> None:
    """The body of GetObject breaks off after botocore returned the response: outside its retries, in ours."""
    repo = s3_repo(tmp_path, bucket, proxy.url, UploadTuning(attempts=3, backoff=0.01, progress=False))
    small, digests = a_file(tmp_path, "SHA256SUMS", 3000)
    repo.put("app/1.0/SHA256SUMS", small, digests)
    proxy.add(Rule(get_object, "cut-reply", times=2))
    assert repo.verify("app/1.0/SHA256SUMS", digests) == []
    assert len(proxy.statuses(get_object)) == 3
    proxy.add(Rule(get_object, "cut-reply", times=3))
    with pytest.raises(UploadError, match=r"GetObject app/1.0/SHA256SUMS failed: the body broke off after 1500 bytes"):
        repo.verify("app/1.0/SHA256SUMS", digests)
    assert len(proxy.statuses(get_object)) == 6


def test_s3_resumes_from_the_journal(tmp_path: Path, s3: Any, bucket: str, proxy: FaultProxy) -> None:
    """Part 3 keeps failing: the run stops; the next run sends only what the store does not hold."""
    tuning = UploadTuning(part_size=5 * MiB, multipart_threshold=5 * MiB, concurrency=1, attempts=1, progress=False)
    blocker = proxy.add(Rule(upload_part, "fail", times=1000, after=2))
    repo = s3_repo(tmp_path, bucket, proxy.url, tuning)
    src, digests = a_file(tmp_path, "a.ova", 22 * MiB)  # 5 parts
    journal = UploadJournal(tmp_path / "journal.json", repo.url)
    with pytest.raises(UploadError):
        repo.put("app/1.0/a.ova", src, digests, journal)
    assert keys(s3, bucket) == []  # nothing visible at the key
    record = UploadJournal(tmp_path / "journal.json", repo.url).get("app/1.0/a.ova")
    assert record is not None and sorted(record.parts) == [1, 2]
    proxy.rules.remove(blocker)
    sent_before = len(proxy.statuses(upload_part))

    result = repo.put("app/1.0/a.ova", src, digests, UploadJournal(tmp_path / "journal.json", repo.url))
    assert result.outcome is PutOutcome.RESUMED
    assert len(proxy.statuses(upload_part)) - sent_before == 3  # parts 3, 4, 5 only
    assert repo.verify("app/1.0/a.ova", digests) == []
    assert keys(s3, bucket) == ["pub/app/1.0/a.ova"] and open_uploads(s3, bucket) == []
    assert not (tmp_path / "journal.json").exists()


def test_s3_journal_parts_unknown_to_the_store_are_sent_again(
    tmp_path: Path, s3: Any, bucket: str, moto_endpoint: str
) -> None:
    """The journal is a hint: an upload the store no longer knows starts afresh, without error."""
    repo = s3_repo(tmp_path, bucket, moto_endpoint)
    src, digests = a_file(tmp_path, "a.ova", 11 * MiB)
    journal = UploadJournal(tmp_path / "journal.json", repo.url)
    journal.start("app/1.0/a.ova", "no-such-upload", 5 * MiB, digests.size, digests.sha256)
    assert repo.put("app/1.0/a.ova", src, digests, journal).outcome is PutOutcome.UPLOADED
    assert repo.verify("app/1.0/a.ova", digests) == [] and open_uploads(s3, bucket) == []


@pytest.mark.parametrize("same_bytes", [True, False], ids=["same-content", "different-content"])
def test_s3_conditional_complete_lets_one_writer_win(
    tmp_path: Path, s3: Any, bucket: str, proxy: FaultProxy, moto_endpoint: str, same_bytes: bool
) -> None:
    """Writer A is held just before completing; B completes first. A's complete gets 412 and A then
    proves B's object (same bytes: success) or refuses (different bytes): never an overwrite."""
    hold = proxy.add(Rule(complete_upload, "hold"))
    repo_a = s3_repo(tmp_path / "a", bucket, proxy.url)
    repo_b = s3_repo(tmp_path / "b", bucket, moto_endpoint)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    src_a, digests_a = a_file(tmp_path / "a", "x.ova", 11 * MiB)
    src_b, digests_b = a_file(tmp_path / "b", "x.ova", 11 * MiB, seed="" if same_bytes else "b")
    outcome: list[object] = []
    writer_a = threading.Thread(
        target=lambda: outcome.append(_attempt(lambda: repo_a.put("app/1.0/x.ova", src_a, digests_a)))
    )
    writer_a.start()
    assert hold.reached.wait(30)
    assert repo_b.put("app/1.0/x.ova", src_b, digests_b).outcome is PutOutcome.UPLOADED
    hold.release.set()
    writer_a.join(30)
    assert proxy.statuses(complete_upload) == [412]
    if same_bytes:
        assert getattr(outcome[0], "outcome", None) is PutOutcome.PRESENT
    else:
        assert isinstance(outcome[0], UploadError) and "different content" in str(outcome[0])
    assert keys(s3, bucket) == ["pub/app/1.0/x.ova"] and open_uploads(s3, bucket) == []
    assert s3.get_object(Bucket=bucket, Key="pub/app/1.0/x.ova")["Body"].read() == src_b.read_bytes()


def _attempt(fn: Any) -> object:
    try:
        return fn()
    except UploadError as e:
        return e


def test_proxy_passes_requests_through_unchanged(tmp_path: Path, bucket: str, proxy: FaultProxy) -> None:
    """The fault proxy itself: with no rules it is transparent (HEAD sizes, bodies, errors)."""
    proxy.add(Rule(any_request, "fail", times=0))
    repo = s3_repo(tmp_path, bucket, proxy.url)
    src, digests = a_file(tmp_path, "a", 100)
    repo.put("k/a", src, digests)
    info = repo.head("k/a")
    assert info is not None and info.size == 100 and repo.head("k/none") is None


def test_upload_tuning_from_the_environment() -> None:
    tuning = UploadTuning.from_environ({"VMI_UPLOAD_PART_MIB": "8", "VMI_UPLOAD_CONCURRENCY": "2"})
    assert (tuning.part_size, tuning.concurrency, tuning.multipart_threshold) == (8 * MiB, 2, 64 * MiB)
    with pytest.raises(ConfigError) as err:
        UploadTuning.from_environ({"VMI_UPLOAD_PART_MIB": "4", "VMI_UPLOAD_ATTEMPTS": "x"})
    assert err.value.problems == [
        "environment: VMI_UPLOAD_PART_MIB: '4' must be an integer >= 5",
        "environment: VMI_UPLOAD_ATTEMPTS: 'x' must be an integer >= 1",
    ]
    # a 1 TiB file stays under S3's 10,000 parts
    assert UploadTuning().part_size_for(1 << 40) // MiB == 117


def test_s3_an_upload_gone_at_completion_starts_again(tmp_path: Path, s3: Any, bucket: str, proxy: FaultProxy) -> None:
    """S3 answers the complete with 404 NoSuchUpload (a lifecycle rule or an operator aborted it; moto
    answers 500 there, so the proxy gives S3's reply): nothing is at the key, so the file goes again."""
    proxy.add(Rule(complete_upload, "fail", status=404, code="NoSuchUpload"))
    repo = s3_repo(tmp_path, bucket, proxy.url)
    src, digests = a_file(tmp_path, "a.ova", 11 * MiB)
    assert repo.put("app/1.0/a.ova", src, digests).outcome is PutOutcome.UPLOADED
    assert proxy.statuses(complete_upload) == [404, 200]
    assert len(proxy.statuses(upload_part)) == 6  # 3 parts, twice
    assert repo.verify("app/1.0/a.ova", digests) == [] and open_uploads(s3, bucket) == []
