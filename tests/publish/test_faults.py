"""A publish killed at any point, raced by another, or hit by transient errors ends, after a rerun,
with exactly one object per artifact and one catalogue version, verified.

`invoke publish` runs in a child process through a misbehaving loopback proxy in front of moto; the
proxy holds the request at the chosen point and the test SIGKILLs the child there.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.settings import Settings

from .conftest import MiB, PackagedVersion, make_packaged_version, make_settings, run_invoke
from .faultproxy import FaultProxy, Rule, complete_upload, get_object, put_object, upload_part
from .test_publish import all_versions, assert_published_once, s3_env, s3_objects

pytestmark = pytest.mark.slow

JOURNAL = "debian-12/.2026.11.22.publish-journal.json"
WAIT = 240  # seconds a child may take to reach a point on a loaded 2-core machine
Spawn = Callable[[list[str], dict[str, str], Path], subprocess.Popen[bytes]]


def setup(tmp_path: Path, bucket: str, endpoint: str, seed: str = "") -> tuple[Settings, PackagedVersion]:
    settings = make_settings(tmp_path, f"s3://{bucket}/images", endpoint)
    # OVA: 3 parts of 5 MiB, qcow2: 2 parts, then SHA256SUMS and SHA512SUMS in one PUT each
    packaged = make_packaged_version(settings.output_dir, ova_size=12 * MiB, qcow2_size=6 * MiB, seed=seed)
    return settings, packaged


def env_for(settings: Settings, endpoint: str, catalogue: str | None = None) -> dict[str, str]:
    env = s3_env(settings)
    env["VMI_S3_ENDPOINT_URL"] = endpoint
    env["VMI_UPLOAD_CONCURRENCY"] = "1"  # parts in order, so "after N parts" means parts 1..N
    if catalogue:
        env["VMI_CATALOGUE"] = catalogue
    return env


def kill(child: subprocess.Popen[bytes]) -> None:
    child.send_signal(signal.SIGKILL)
    assert child.wait(30) == -signal.SIGKILL


def open_uploads(s3: Any, bucket: str) -> list[str]:
    return [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def nothing_partial_is_visible(s3: Any, bucket: str, packaged: PackagedVersion) -> None:
    """Whatever is at a final key is complete and correct; no version is registered yet."""
    for name, data in s3_objects(s3, bucket).items():
        assert data == (packaged.directory / name).read_bytes(), name


def rerun_completes(settings: Settings, s3: Any, bucket: str, packaged: PackagedVersion, endpoint: str) -> str:
    proc = run_invoke(["publish", "--appliance", "debian-12"], env_for(settings, endpoint))
    assert proc.returncode == 0, proc.stderr
    assert_published_once(settings, packaged, s3_objects(s3, bucket))
    assert open_uploads(s3, bucket) == []
    assert not (settings.output_dir / JOURNAL).exists()
    return proc.stdout + proc.stderr


def wait_for(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


KILL_POINTS = {
    # held before the store sees part 3 of the OVA: parts 1-2 are in an open multipart upload
    "after-2-parts": (Rule(upload_part, "hold", after=2), "resumed, verified"),
    # the store completed the OVA, the reply never came back: the rerun must find it, not re-send it
    "complete-reply-lost": (Rule(complete_upload, "hold-reply"), "already there, verified"),
    # a single PUT (SHA256SUMS) held before it reaches the store
    "during-put": (Rule(put_object, "hold"), "uploaded, verified"),
    # everything uploaded; held while verifying the last object, so never registered
    "before-registration": (Rule(get_object, "hold-reply", after=3), "already there, verified"),
}


@pytest.mark.parametrize("point", KILL_POINTS)
def test_killed_publish_completes_on_rerun(
    tmp_path: Path, s3: Any, bucket: str, proxy: FaultProxy, spawn: Spawn, point: str
) -> None:
    settings, packaged = setup(tmp_path, bucket, proxy.url)
    rule, rerun_says = KILL_POINTS[point]
    proxy.add(rule)
    child = spawn(["publish", "--appliance", "debian-12"], env_for(settings, proxy.url), tmp_path / "run1.log")
    assert rule.reached.wait(WAIT), (tmp_path / "run1.log").read_text()
    kill(child)

    assert all_versions(settings) == []
    nothing_partial_is_visible(s3, bucket, packaged)
    if point == "after-2-parts":
        journal = json.loads((settings.output_dir / JOURNAL).read_text())
        ova_key = "debian-12/2026.11.22/debian-12-2026.11.22.ova"
        assert sorted(journal["uploads"][ova_key]["parts"]) == ["1", "2"]
        assert s3_objects(s3, bucket) == {} and len(open_uploads(s3, bucket)) == 1
    if point == "before-registration":
        assert len(s3_objects(s3, bucket)) == 4

    parts_before = len(proxy.statuses(upload_part))
    output = rerun_completes(settings, s3, bucket, packaged, proxy.url)
    assert rerun_says in output
    if point == "after-2-parts":
        assert len(proxy.statuses(upload_part)) - parts_before == 3  # OVA part 3 and the qcow2's two parts


def test_killed_while_waiting_to_register(
    tmp_path: Path, s3: Any, bucket: str, proxy: FaultProxy, spawn: Spawn
) -> None:
    """Uploads verified, the catalogue database locked by someone else: the kill lands exactly between
    upload and registration; the rerun registers without sending anything again."""
    settings, packaged = setup(tmp_path, bucket, proxy.url)
    last_get = proxy.add(Rule(get_object, "hold-reply", after=3))
    log = tmp_path / "run1.log"
    child = spawn(["publish", "--appliance", "debian-12"], env_for(settings, proxy.url), log)
    assert last_get.reached.wait(WAIT), log.read_text()
    db = sqlite3.connect(settings.catalogue.removeprefix("sqlite:///"), timeout=30)
    db.execute("BEGIN EXCLUSIVE")
    last_get.release.set()
    wait_for(lambda: "register in the catalogue" in log.read_text())
    kill(child)
    db.rollback()
    db.close()
    assert all_versions(settings) == []
    assert len(s3_objects(s3, bucket)) == 4

    sent = len(proxy.statuses(upload_part)) + len(proxy.statuses(put_object))
    output = rerun_completes(settings, s3, bucket, packaged, proxy.url)
    assert output.count("already there, verified") == 4
    assert len(proxy.statuses(upload_part)) + len(proxy.statuses(put_object)) == sent


def test_concurrent_publishes_on_one_machine_take_turns(
    tmp_path: Path, s3: Any, bucket: str, proxy: FaultProxy, spawn: Spawn
) -> None:
    settings, packaged = setup(tmp_path, bucket, proxy.url)
    first_part = proxy.add(Rule(upload_part, "hold"))
    env = env_for(settings, proxy.url)
    a = spawn(["publish", "--appliance", "debian-12"], env, tmp_path / "a.log")
    assert first_part.reached.wait(WAIT)
    b = spawn(["publish", "--appliance", "debian-12"], env, tmp_path / "b.log")
    wait_for(lambda: "waiting for another publish" in (tmp_path / "b.log").read_text())
    first_part.release.set()
    assert a.wait(WAIT) == 0, (tmp_path / "a.log").read_text()
    assert b.wait(WAIT) == 0, (tmp_path / "b.log").read_text()
    assert (tmp_path / "b.log").read_text().count("already there, verified") == 4
    assert_published_once(settings, packaged, s3_objects(s3, bucket))
    assert open_uploads(s3, bucket) == []


def test_concurrent_publishes_from_two_machines(
    tmp_path: Path, s3: Any, bucket: str, proxy: FaultProxy, spawn: Spawn
) -> None:
    """Two builders with identical outputs (no shared lock or journal) are both held just before
    completing the OVA, then let go one after the other: the conditional completion refuses the
    second, which proves the first one's object instead; both register the same payload; one version."""
    settings_a, packaged = setup(tmp_path / "a", bucket, proxy.url)
    settings_b, _ = setup(tmp_path / "b", bucket, proxy.url)
    catalogue = settings_a.catalogue
    all_versions(settings_a)  # the catalogue exists before publishers arrive (as a service would)
    holds = [proxy.add(Rule(complete_upload, "hold")), proxy.add(Rule(complete_upload, "hold"))]
    a = spawn(["publish", "--appliance", "debian-12"], env_for(settings_a, proxy.url), tmp_path / "a.log")
    b = spawn(["publish", "--appliance", "debian-12"], env_for(settings_b, proxy.url, catalogue), tmp_path / "b.log")
    for hold in holds:  # generous: two children share two busy cores
        assert hold.reached.wait(WAIT), (tmp_path / "a.log").read_text() + (tmp_path / "b.log").read_text()
    # let one complete reach the store first (moto, unlike S3, does not make the If-None-Match check
    # and the write atomic for two requests arriving in the same instant)
    holds[0].release.set()
    ova = ".ova?uploadId="
    wait_for(lambda: proxy.statuses(complete_upload, ova) == [200])
    holds[1].release.set()
    assert a.wait(WAIT) == 0, (tmp_path / "a.log").read_text()
    assert b.wait(WAIT) == 0, (tmp_path / "b.log").read_text()
    assert proxy.statuses(complete_upload, ova) == [200, 412]  # one writer wins, the other is refused
    logs = (tmp_path / "a.log").read_text() + (tmp_path / "b.log").read_text()
    assert logs.count("debian-12-2026.11.22.ova: already there, verified") == 1
    assert_published_once(settings_a, packaged, s3_objects(s3, bucket))
    assert open_uploads(s3, bucket) == []


def test_transient_errors_during_publish(tmp_path: Path, s3: Any, bucket: str, proxy: FaultProxy) -> None:
    settings, packaged = setup(tmp_path, bucket, proxy.url)
    for match, action in (
        (upload_part, "fail"),
        (upload_part, "reset"),
        (complete_upload, "fail"),
        (put_object, "reset"),
        (get_object, "fail"),
    ):
        proxy.add(Rule(match, action, after=1))
    proc = run_invoke(["publish", "--appliance", "debian-12"], env_for(settings, proxy.url))
    assert proc.returncode == 0, proc.stderr
    assert_published_once(settings, packaged, s3_objects(s3, bucket))
    assert proxy.statuses(upload_part).count(503) == 1 and proxy.statuses(upload_part).count(0) == 1
    assert 503 in proxy.statuses(complete_upload) and 0 in proxy.statuses(put_object)
    assert open_uploads(s3, bucket) == []


def test_bytes_damaged_on_the_way_are_caught_and_removed(
    tmp_path: Path, s3: Any, bucket: str, proxy: FaultProxy
) -> None:
    """A store that does not check checksums (moto, like some S3-compatible ones) keeps a damaged
    part; the read-back verification catches it, removes the object, registers nothing; a rerun fixes it."""
    settings, packaged = setup(tmp_path, bucket, proxy.url)
    proxy.add(Rule(upload_part, "corrupt", after=1))
    proc = run_invoke(["publish", "--appliance", "debian-12"], env_for(settings, proxy.url))
    assert proc.returncode == 2
    assert "debian-12-2026.11.22.ova is not what was sent (removed)" in proc.stderr
    assert "sha256 is" in proc.stderr
    assert s3_objects(s3, bucket) == {} and all_versions(settings) == []
    rerun_completes(settings, s3, bucket, packaged, proxy.url)
