"""The build cache key: every input that decides the image changes it, nothing else does;
version names; finding an up-to-date build."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.appliance import Appliance, load_appliance
from pipeline.builder.cache import compute_inputs, find_up_to_date, inputs_digest, next_version
from pipeline.fsutil import hash_file

from .test_manifest import sample_manifest

TOOLS = {"packer": "Packer v1.6.6", "qemu": "QEMU emulator version 7.2.22"}


@pytest.fixture()
def appliance_dir(tmp_path: Path, project_root: Path) -> Path:
    """A copy of the debian-12 appliance and the provisioners, to change freely."""
    shutil.copytree(project_root / "packer_templates" / "debian-12", tmp_path / "templates" / "debian-12")
    shutil.copytree(project_root / "packer_templates" / "_shared", tmp_path / "templates" / "_shared")
    shutil.copytree(project_root / "provisioners", tmp_path / "provisioners")
    return tmp_path


def _load(root: Path) -> Appliance:
    return load_appliance(root / "templates" / "debian-12", root / "provisioners")


def _digest(root: Path, base: str = "base-1", tools: dict[str, str] | None = None) -> str:
    return inputs_digest(compute_inputs(_load(root), root / "provisioners", base, tools or TOOLS))


def test_same_inputs_same_digest(appliance_dir: Path) -> None:
    assert _digest(appliance_dir) == _digest(appliance_dir)
    inputs = compute_inputs(_load(appliance_dir), appliance_dir / "provisioners", "base-1", TOOLS)
    assert set(inputs) >= {"template", "variables", "base", "tool:packer", "tool:qemu", "provisioner:seal.sh"}


def _edit_template(root: Path) -> None:
    t = root / "templates/_shared/qemu.pkr.hcl"
    t.write_text(t.read_text() + "\n# changed\n")


def _edit_provisioner(root: Path) -> None:
    p = root / "provisioners/seal.sh"
    p.write_text(p.read_text() + "\n# changed\n")


def _edit_definition(field: str, value: object):  # type: ignore[no-untyped-def]
    def edit(root: Path) -> None:
        path = root / "templates/debian-12/appliance.yaml"
        data = yaml.safe_load(path.read_text())
        node = data
        *parents, last = field.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
        path.write_text(yaml.safe_dump(data))

    return edit


@pytest.mark.parametrize(
    "change",
    [
        _edit_template,
        _edit_provisioner,
        _edit_definition("variables", {"locale": "en_GB.UTF-8"}),
        _edit_definition("hardware.disk_gb", 4),
        _edit_definition("provisioners", ["upgrade.sh", "seal.sh"]),
    ],
    ids=["template", "provisioner", "variables", "disk-size", "provisioner-list"],
)
def test_each_input_changes_the_digest(appliance_dir: Path, change) -> None:  # type: ignore[no-untyped-def]
    before = _digest(appliance_dir)
    change(appliance_dir)
    assert _digest(appliance_dir) != before


@pytest.mark.parametrize(
    "change",
    [
        _edit_definition("os.admin_user", "admin"),
        _edit_definition("os.distro", "debian-cloud"),
        _edit_definition("oci", {"tag": "v{version}", "rolling_tag": "latest"}),
    ],
    ids=["admin-user", "distro", "oci-tags"],
)
def test_publishing_labels_leave_the_digest_alone(appliance_dir: Path, change) -> None:  # type: ignore[no-untyped-def]
    """How the image is labelled and tagged in a registry is not a build input: no rebuild for it."""
    before = _digest(appliance_dir)
    change(appliance_dir)
    assert _digest(appliance_dir) == before


def test_base_and_tools_change_the_digest(appliance_dir: Path) -> None:
    before = _digest(appliance_dir)
    assert _digest(appliance_dir, base="base-2") != before
    assert _digest(appliance_dir, tools={**TOOLS, "packer": "Packer v1.7.0"}) != before


def test_descriptive_fields_do_not_change_the_digest(appliance_dir: Path) -> None:
    before = _digest(appliance_dir)
    _edit_definition("title", "Another title")(appliance_dir)
    _edit_definition("vos", ["other.vo.example"])(appliance_dir)
    assert _digest(appliance_dir) == before


def test_version_names(tmp_path: Path) -> None:
    day = dt.date(2026, 11, 22)
    assert next_version(tmp_path / "none", day) == "2026.11.22"
    (tmp_path / "2026.11.22").mkdir()
    assert next_version(tmp_path, day) == "2026.11.22.1"
    (tmp_path / "2026.11.22.1").mkdir()
    assert next_version(tmp_path, day) == "2026.11.22.2"
    assert next_version(tmp_path, dt.date(2026, 11, 23)) == "2026.11.23"


def test_find_up_to_date_needs_same_digest_and_intact_disk(tmp_path: Path) -> None:
    version_dir = tmp_path / "2026.11.22"
    disk = version_dir / "build" / "demo-2026.11.22.qcow2"
    disk.parent.mkdir(parents=True)
    disk.write_bytes(b"disk bytes")
    manifest = sample_manifest(disk_digests=hash_file(disk), inputs_digest="a" * 64)
    manifest.save(version_dir)
    found = find_up_to_date(tmp_path, "a" * 64)
    assert found is not None and found[0] == version_dir
    assert find_up_to_date(tmp_path, "b" * 64) is None
    disk.write_bytes(b"truncated")
    assert find_up_to_date(tmp_path, "a" * 64) is None


def test_rootfs_digest_is_remembered_until_the_tarball_changes(tmp_path: Path) -> None:
    from pipeline.builder.bootstrap import tarball_sha256

    tarball = tmp_path / "rootfs.tar"
    tarball.write_bytes(b"one")
    assert tarball_sha256(tarball) == hash_file(tarball).sha256
    sidecar = tmp_path / "rootfs.tar.sha256"
    assert sidecar.read_text().split()[1] == hash_file(tarball).sha256
    tarball.write_bytes(b"two, longer")  # new size and mtime: the remembered digest is stale
    assert tarball_sha256(tarball) == hash_file(tarball).sha256
