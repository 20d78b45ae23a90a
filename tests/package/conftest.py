"""Fixtures for the package stage: real disks made with qemu-img, packaged for real."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.appliance import Appliance, find_appliance
from pipeline.package import PackageResult, package_appliance

from .helpers import ROOT, SAMPLES, VERSION, make_disk, settings_for


@pytest.fixture(scope="session", autouse=True)
def _private_tmpdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tools that litter TMPDIR (libguestfs, virt-v2v) write into a folder of ours."""
    tmp = tmp_path_factory.mktemp("tooltmp")
    old = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp)
    yield
    if old is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = old


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """Other tools' descriptors, part of the project: a missing folder is a broken checkout, not a skip."""
    if not any(SAMPLES.glob("*.ovf")):
        pytest.fail(f"{SAMPLES}: no OVF samples (they are part of the repository: restore them from git)")
    return SAMPLES


@pytest.fixture(scope="session")
def appliance() -> Appliance:
    return find_appliance(ROOT / "packer_templates", "debian-12")


@pytest.fixture(scope="session")
def source_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64 MiB qcow2 shared by the tests (qemu-img compare checks against it)."""
    return make_disk(tmp_path_factory.mktemp("disk") / "source.qcow2")


@pytest.fixture(scope="session")
def packaged(tmp_path_factory: pytest.TempPathFactory, source_disk: Path) -> PackageResult:
    """The source disk packaged once with ``--disk --out --raw`` (read-only for the tests)."""
    out = tmp_path_factory.mktemp("packaged")
    return package_appliance(
        settings_for(out / "output"), "debian-12", version=VERSION, disk=source_disk, out=out, raw=True
    )


@pytest.fixture(scope="session")
def ova_path(packaged: PackageResult) -> Path:
    return packaged.out_dir / f"debian-12-{VERSION}.ova"
