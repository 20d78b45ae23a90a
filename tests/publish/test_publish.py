"""`invoke publish` / `invoke audit` end to end: real files, moto's S3 server or a folder, the SQLite
catalogue through its in-process client, the CLI in a child process."""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import struct
import subprocess
import termios
from pathlib import Path
from typing import Any

import pytest

from pipeline.catalogue.client import open_catalogue
from pipeline.catalogue.contract import NotFound, VersionInfo
from pipeline.errors import ArtifactError, UploadError
from pipeline.fsutil import hash_file
from pipeline.publish import audit_repository, publish_version
from pipeline.repository import PutOutcome, UploadTuning
from pipeline.settings import Settings

from .conftest import (
    ROOT,
    VENV_BIN,
    MiB,
    PackagedVersion,
    make_packaged_version,
    make_settings,
    run_invoke,
    settings_env,
)

TUNING = UploadTuning(part_size=5 * MiB, multipart_threshold=5 * MiB, concurrency=2, backoff=0.01, progress=False)
PUBLISHED = ["debian-12-2026.11.22.ova", "debian-12-2026.11.22.qcow2", "SHA256SUMS", "SHA512SUMS"]


def registered(settings: Settings, version: str = "2026.11.22") -> VersionInfo | None:
    catalogue = open_catalogue(settings)
    try:
        return catalogue.get_version("debian-12", version)
    finally:
        catalogue.close()


def all_versions(settings: Settings) -> list[VersionInfo]:
    catalogue = open_catalogue(settings)
    try:
        return catalogue.list_versions("debian-12")
    except NotFound:
        return []
    finally:
        catalogue.close()


def s3_keys(s3: Any, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def assert_published_once(settings: Settings, packaged: PackagedVersion, stored: dict[str, bytes]) -> None:
    """Exactly one object per artifact, with the packaged bytes, and exactly one catalogue version
    whose images point at them with the manifest's checksums."""
    assert sorted(stored) == sorted(PUBLISHED)
    for name, data in stored.items():
        assert data == (packaged.directory / name).read_bytes(), name
    versions = all_versions(settings)
    assert [v.version for v in versions] == [packaged.version]
    images = {i.format: i for i in versions[0].images}
    assert sorted(images) == ["ova", "qcow2"]
    for fmt, image in images.items():
        artifact = packaged.manifest.artifact(fmt)
        assert image.uri == f"http://127.0.0.1:8080/repo/debian-12/2026.11.22/{artifact.name}"
        assert (image.size, image.sha256, image.sha512) == (artifact.size, artifact.sha256, artifact.sha512)
        assert (image.min_cores, image.recommended_cores, image.min_ram_mb, image.recommended_ram_mb) == (
            1,
            2,
            512,
            2048,
        )
        assert (image.arch, image.os_name, image.os_version) == ("x86_64", "Debian", "12")


def folder_contents(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in root.rglob("*") if p.is_file()}


# -- the embedded default: a folder and SQLite ----------------------------------------------------


def test_publish_to_a_folder_registers_once_and_is_idempotent(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, (tmp_path / "repository").as_uri())
    packaged = make_packaged_version(settings.output_dir)
    first = publish_version(settings, "debian-12", tuning=TUNING)
    assert [p.outcome for p in first.puts] == [PutOutcome.UPLOADED] * 4
    assert "registered in the catalogue" in first.summary()
    assert first.catalogue_url == "http://127.0.0.1:8080/appliances/debian-12/2026.11.22"
    assert_published_once(settings, packaged, folder_contents(tmp_path / "repository"))
    version = registered(settings)
    assert version is not None and version.images[0].integrity == "verified"  # the catalogue hashed the files

    again = publish_version(settings, "debian-12", tuning=TUNING)
    assert [p.outcome for p in again.puts] == [PutOutcome.PRESENT] * 4
    assert_published_once(settings, packaged, folder_contents(tmp_path / "repository"))
    assert not list(settings.output_dir.glob("debian-12/.*journal*"))


def test_dry_run_prints_keys_and_payload_and_writes_nothing(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, (tmp_path / "repository").as_uri())
    make_packaged_version(settings.output_dir)
    before = sorted(p for p in tmp_path.rglob("*"))
    proc = run_invoke(["publish", "--appliance", "debian-12", "--dry-run"], settings_env(settings))
    assert proc.returncode == 0, proc.stderr
    for name in PUBLISHED:
        assert f"debian-12/2026.11.22/{name}  (" in proc.stdout
    assert "build/debian-12-2026.11.22.qcow2" not in proc.stdout  # the build disk is never published
    payload = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert payload["appliance"] == "debian-12" and payload["version"] == "2026.11.22"
    assert sorted(i["format"] for i in payload["images"]) == ["ova", "qcow2"]
    assert all(len(i["sha512"]) == 128 and i["recommended_ram_mb"] == 2048 for i in payload["images"])
    assert sorted(p for p in tmp_path.rglob("*")) == before  # no repository, no catalogue.db, no journal


def test_an_unpackaged_version_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, (tmp_path / "repository").as_uri())
    packaged = make_packaged_version(settings.output_dir)
    (packaged.directory / "SHA512SUMS").unlink()
    (packaged.directory / "debian-12-2026.11.22.qcow2").write_bytes(b"short")
    with pytest.raises(ArtifactError) as err:
        publish_version(settings, "debian-12", tuning=TUNING)
    text = str(err.value)
    assert f"{packaged.directory / 'SHA512SUMS'}: missing" in text
    assert f"{packaged.directory / 'debian-12-2026.11.22.qcow2'}: 5 bytes, the manifest says {2 * MiB}" in text
    assert "invoke package --appliance debian-12" in text
    assert not (tmp_path / "repository").exists() and not (tmp_path / "catalogue.db").exists()


def test_a_file_changed_after_packaging_is_never_registered(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, (tmp_path / "repository").as_uri())
    packaged = make_packaged_version(settings.output_dir)
    qcow2 = packaged.directory / "debian-12-2026.11.22.qcow2"
    qcow2.write_bytes(b"\0" + qcow2.read_bytes()[1:])
    with pytest.raises(UploadError, match="changed since it was packaged"):
        publish_version(settings, "debian-12", tuning=TUNING)
    assert sorted(folder_contents(tmp_path / "repository")) == ["debian-12-2026.11.22.ova"]
    assert registered(settings) is None


# -- S3 through the CLI ---------------------------------------------------------------------------


def s3_settings(tmp_path: Path, bucket: str, endpoint: str) -> Settings:
    return make_settings(tmp_path, f"s3://{bucket}/images", endpoint)


def s3_env(settings: Settings) -> dict[str, str]:
    return {**settings_env(settings), "VMI_UPLOAD_PART_MIB": "5", "VMI_UPLOAD_THRESHOLD_MIB": "5"}


def s3_objects(s3: Any, bucket: str) -> dict[str, bytes]:
    out = {}
    for key in s3_keys(s3, bucket):
        assert key.startswith("images/debian-12/2026.11.22/"), key
        out[key.rsplit("/", 1)[1]] = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return out


def test_invoke_publish_to_s3(tmp_path: Path, s3: Any, bucket: str, moto_endpoint: str) -> None:
    settings = s3_settings(tmp_path, bucket, moto_endpoint)
    packaged = make_packaged_version(settings.output_dir, ova_size=12 * MiB, qcow2_size=6 * MiB)
    proc = run_invoke(["publish", "--appliance", "debian-12"], s3_env(settings))
    assert proc.returncode == 0, proc.stderr
    assert "debian-12/2026.11.22/debian-12-2026.11.22.ova: uploaded, verified" in proc.stdout
    assert "catalogue: http://127.0.0.1:8080/appliances/debian-12/2026.11.22" in proc.stdout
    assert_published_once(settings, packaged, s3_objects(s3, bucket))
    head = s3.head_object(Bucket=bucket, Key="images/debian-12/2026.11.22/debian-12-2026.11.22.ova")
    assert head["Metadata"]["sha512"] == packaged.manifest.artifact("ova").sha512

    again = run_invoke(["publish", "--appliance", "debian-12"], s3_env(settings))
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already there, verified") == 4
    assert_published_once(settings, packaged, s3_objects(s3, bucket))


def test_publish_with_different_bytes_under_a_published_version_is_refused(
    tmp_path: Path, s3: Any, bucket: str, moto_endpoint: str
) -> None:
    settings = s3_settings(tmp_path, bucket, moto_endpoint)
    packaged = make_packaged_version(settings.output_dir)
    assert run_invoke(["publish", "--appliance", "debian-12"], s3_env(settings)).returncode == 0
    other = s3_settings(tmp_path / "other", bucket, moto_endpoint)
    make_packaged_version(other.output_dir, seed="rebuilt")
    other = dataclasses.replace(other, catalogue=settings.catalogue)
    proc = run_invoke(["publish", "--appliance", "debian-12"], s3_env(other))
    assert proc.returncode == 2
    assert "already exists with different content" in proc.stderr and "publish a new version" in proc.stderr
    assert_published_once(settings, packaged, s3_objects(s3, bucket))


# -- audit ------------------------------------------------------------------------------------------


def test_audit_reports_deleted_and_replaced_objects(tmp_path: Path, s3: Any, bucket: str, moto_endpoint: str) -> None:
    settings = s3_settings(tmp_path, bucket, moto_endpoint)
    packaged = make_packaged_version(settings.output_dir)
    publish_version(settings, "debian-12", tuning=TUNING)
    s3.put_object(Bucket=bucket, Key="images/stray/file.bin", Body=b"x")
    clean = run_invoke(["audit"], settings_env(settings))
    assert clean.returncode == 0, clean.stderr
    assert "2 registered image(s) checked, no drift" in clean.stdout
    assert "images/stray/file.bin" not in clean.stdout and "stray/file.bin" in clean.stdout

    ova, qcow2 = packaged.manifest.artifact("ova"), packaged.manifest.artifact("qcow2")
    s3.delete_object(Bucket=bucket, Key=f"images/debian-12/2026.11.22/{ova.name}")
    s3.put_object(  # same size and the same recorded checksums: only the bytes differ
        Bucket=bucket,
        Key=f"images/debian-12/2026.11.22/{qcow2.name}",
        Body=b"\7" * qcow2.size,
        Metadata={"sha256": qcow2.sha256, "sha512": qcow2.sha512},
    )
    replaced = b"\7" * qcow2.size
    report = audit_repository(settings)
    assert not report.ok and report.checked == 2
    assert report.drift == (
        f"debian-12 2026.11.22: debian-12/2026.11.22/{ova.name}: missing from s3://{bucket}/images",
        f"debian-12 2026.11.22: debian-12/2026.11.22/{qcow2.name}: sha256 is "
        f"{hashlib.sha256(replaced).hexdigest()}, expected {qcow2.sha256}",
        f"debian-12 2026.11.22: debian-12/2026.11.22/{qcow2.name}: sha512 is "
        f"{hashlib.sha512(replaced).hexdigest()[:16]}..., expected {qcow2.sha512[:16]}...",
    )
    proc = run_invoke(["audit"], settings_env(settings))
    assert proc.returncode == 1 and "2 registered image(s) checked, 3 problem(s)" in proc.stdout
    assert f"DRIFT debian-12 2026.11.22: debian-12/2026.11.22/{ova.name}: missing" in proc.stdout


def test_audit_of_a_folder_repository(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, (tmp_path / "repository").as_uri())
    packaged = make_packaged_version(settings.output_dir)
    publish_version(settings, "debian-12", tuning=TUNING)
    assert audit_repository(settings).ok
    ova = tmp_path / "repository/debian-12/2026.11.22" / packaged.manifest.artifact("ova").name
    ova.chmod(0o644)
    ova.write_bytes(ova.read_bytes()[:-1] + b"!")
    report = audit_repository(settings)
    assert [d.split(": ")[2].split(" is ")[0] for d in report.drift] == ["sha256", "sha512"]
    assert hash_file(ova).size == packaged.manifest.artifact("ova").size


def test_progress_bar_with_rate_and_eta_on_a_terminal(tmp_path: Path) -> None:
    """On a terminal, each upload shows a tqdm bar (bytes, rate, ETA) on stderr; in a log, one line each."""
    settings = make_settings(tmp_path, (tmp_path / "repository").as_uri())
    make_packaged_version(settings.output_dir)
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a new pty is 0 columns wide
    proc = subprocess.Popen(
        [str(VENV_BIN / "invoke"), "publish", "--appliance", "debian-12"],
        cwd=ROOT,
        env=settings_env(settings),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
    )
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert proc.wait(120) == 0, seen.decode(errors="replace")
    text = seen.decode(errors="replace")
    bar = re.search(
        r"debian-12-2026\.11\.22\.ova: 100%\|.*\| 3\.00M/3\.00M \[[0-9:]+<[0-9:]+, +[0-9.]+[kMG]?B/s\]", text
    )
    assert bar, text
    assert re.search(r"debian-12-2026\.11\.22\.ova: 3\.0 MiB in [0-9.]+s \([0-9.]+ MiB/s\)", text)

    quiet = run_invoke(["publish", "--appliance", "debian-12"], settings_env(settings))
    assert "100%|" not in quiet.stderr  # no bar when stderr is not a terminal


def test_embedded_defaults_the_printed_url_shows_the_version_and_serves_the_files(tmp_path: Path) -> None:
    """Folder repository + SQLite catalogue: the URL publish prints is the catalogue's page of the
    version, and the image URIs it registered download the published bytes from the service."""
    from fastapi.testclient import TestClient

    from pipeline.catalogue.app import create_app
    from pipeline.catalogue.settings import catalogue_settings

    settings = make_settings(tmp_path, (tmp_path / "repository").as_uri())
    packaged = make_packaged_version(settings.output_dir)
    result = publish_version(settings, "debian-12", tuning=TUNING)
    assert result.catalogue_url is not None and result.registered is not None
    with TestClient(create_app(catalogue_settings(settings), refresh_seconds=None)) as client:
        page = client.get(result.catalogue_url.removeprefix(settings.catalogue_public_url))
        assert page.status_code == 200 and "2026.11.22" in page.text
        for image in result.registered.images:
            assert image.sha512 in page.text
            download = client.get(image.uri.removeprefix("http://127.0.0.1:8080"))
            assert download.status_code == 200
            assert download.content == (packaged.directory / Path(image.uri).name).read_bytes()
