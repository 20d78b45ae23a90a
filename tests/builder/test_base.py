"""The three kinds of base: an upstream image (downloaded from 127.0.0.1 or file://, checksum-verified),
another appliance's newest build (verified against its manifest), and the bootstrap key."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.appliance import find_appliance
from pipeline.builder import build_appliance, build_inputs
from pipeline.builder.base import base_component, fetch_image, prepare_base
from pipeline.errors import BuildError
from pipeline.fsutil import hash_file
from pipeline.settings import Settings

from .test_manifest import sample_manifest


def _qcow2(path: Path) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    return path


def test_image_is_downloaded_from_loopback_and_verified(tmp_path: Path, http_root: tuple[Path, str]) -> None:
    folder, url = http_root
    image = _qcow2(folder / "cloud.qcow2")
    digest = hash_file(image)
    got = fetch_image(f"{url}/cloud.qcow2", f"sha256:{digest.sha256}", "qcow2", tmp_path / "cache")
    assert got.read_bytes() == image.read_bytes()
    # sha512 works too, and a cached copy is re-verified: a corrupted one is fetched again
    got512 = fetch_image(f"{url}/cloud.qcow2", f"sha512:{digest.sha512}", "qcow2", tmp_path / "cache")
    got512.write_bytes(b"corrupted")
    again = fetch_image(f"{url}/cloud.qcow2", f"sha512:{digest.sha512}", "qcow2", tmp_path / "cache")
    assert hash_file(again).sha512 == digest.sha512


def test_image_with_wrong_checksum_is_refused_and_not_cached(tmp_path: Path, http_root: tuple[Path, str]) -> None:
    folder, url = http_root
    _qcow2(folder / "cloud.qcow2")
    wrong = "sha256:" + "0" * 64
    with pytest.raises(BuildError, match="sha256 is [0-9a-f]{64}, the definition says 0{64}") as err:
        fetch_image(f"{url}/cloud.qcow2", wrong, "qcow2", tmp_path / "cache")
    assert err.value.step == "base"
    assert list((tmp_path / "cache" / "images").iterdir()) == []


def test_image_download_errors_name_the_url(tmp_path: Path, http_root: tuple[Path, str]) -> None:
    _, url = http_root
    with pytest.raises(BuildError, match="could not download .*/missing.qcow2"):
        fetch_image(f"{url}/missing.qcow2", "sha256:" + "0" * 64, "qcow2", tmp_path / "cache")


def test_image_from_file_url(tmp_path: Path) -> None:
    image = _qcow2(tmp_path / "local.qcow2")
    got = fetch_image(image.as_uri(), f"sha256:{hash_file(image).sha256}", "qcow2", tmp_path / "cache")
    assert got.read_bytes() == image.read_bytes()


def _layered(settings: Settings, name: str = "layer", base: str = "debian-12") -> None:
    d = settings.templates_dir / name
    d.mkdir()
    src = settings.templates_dir / base
    data = yaml.safe_load((src / "appliance.yaml").read_text())
    data.update(name=name, base={"appliance": base})  # built with the shared template, like its base
    (d / "appliance.yaml").write_text(yaml.safe_dump(data))


def _fake_build(settings: Settings, name: str, version: str, content: bytes) -> Path:
    version_dir = settings.output_dir / name / version
    disk = version_dir / "build" / f"{name}-{version}.qcow2"
    disk.parent.mkdir(parents=True)
    disk.write_bytes(content)
    m = dataclasses.replace(sample_manifest(hash_file(disk)), appliance=name, version=version)
    m = dataclasses.replace(m, artifacts=(dataclasses.replace(m.artifacts[0], name=f"build/{disk.name}"),))
    m.save(version_dir)
    return disk


def test_appliance_base_uses_newest_build_and_verifies_it(scratch_project: Settings, tmp_path: Path) -> None:
    settings = scratch_project
    _layered(settings)
    layer = find_appliance(settings.templates_dir, "layer", settings.provisioners_dir)
    _fake_build(settings, "debian-12", "2026.11.21", b"older disk")
    first = base_component(settings, layer, {})
    newest = _fake_build(settings, "debian-12", "2026.11.22", b"newer disk")
    assert base_component(settings, layer, {}) != first  # a new base version changes the cache key
    with open(tmp_path / "log", "w") as log_file:
        prepared = prepare_base(settings, layer, tmp_path / "w", log_file)
        assert prepared.disk == newest
        assert prepared.ref.kind == "appliance" and prepared.ref.ref == "debian-12@2026.11.22"
        assert prepared.ref.digest == "sha256:" + hashlib.sha256(b"newer disk").hexdigest()
        newest.write_bytes(b"tampered!!")
        with pytest.raises(BuildError, match="does not match its manifest"):
            prepare_base(settings, layer, tmp_path / "w", log_file)


def test_image_base_changes_the_inputs_with_its_checksum(scratch_project: Settings) -> None:
    settings = scratch_project
    path = settings.templates_dir / "debian-12" / "appliance.yaml"
    data = yaml.safe_load(path.read_text())
    data["base"] = {"image": {"url": "http://127.0.0.1:9/x.qcow2", "checksum": "sha256:" + "1" * 64}}
    path.write_text(yaml.safe_dump(data))
    appliance = find_appliance(settings.templates_dir, "debian-12", settings.provisioners_dir)
    one, _ = build_inputs(settings, appliance, {"packer": "v"})
    data["base"]["image"]["checksum"] = "sha256:" + "2" * 64
    path.write_text(yaml.safe_dump(data))
    appliance = find_appliance(settings.templates_dir, "debian-12", settings.provisioners_dir)
    two, _ = build_inputs(settings, appliance, {"packer": "v"})
    assert one != two


def test_failed_build_names_the_step_and_leaves_nothing(scratch_project: Settings, http_root: tuple[Path, str]) -> None:
    """A real build_appliance run that fails (its base image does not match the checksum): the error
    names the step and carries the log tail; no version folder, no partial folder is left."""
    settings = scratch_project
    folder, url = http_root
    _qcow2(folder / "base.qcow2")
    path = settings.templates_dir / "debian-12" / "appliance.yaml"
    data = yaml.safe_load(path.read_text())
    data["base"] = {"image": {"url": f"{url}/base.qcow2", "checksum": "sha256:" + "3" * 64}}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(BuildError) as err:
        build_appliance(settings, "debian-12", version="2026.01.01")
    assert err.value.step == "base"
    assert "downloading base image" in err.value.log_tail
    assert "full log:" in (err.value.hint or "")
    out = settings.output_dir / "debian-12"
    assert [p.name for p in out.iterdir()] == []
    assert not list(settings.work_dir.glob("build-*"))  # scratch space, build key included, is gone


def test_existing_version_is_not_overwritten_without_force(scratch_project: Settings) -> None:
    from pipeline.errors import ConfigError

    existing = scratch_project.output_dir / "debian-12" / "2026.01.02"
    existing.mkdir(parents=True)
    (existing / "keep.txt").write_text("published")
    with pytest.raises(ConfigError, match="version 2026.01.02 exists already") as err:
        build_appliance(scratch_project, "debian-12", version="2026.01.02")
    assert "--force" in (err.value.hint or "")
    assert (existing / "keep.txt").read_text() == "published"
