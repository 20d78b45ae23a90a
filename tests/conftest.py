"""Shared fixtures. Real files in tmp_path, real tools; nothing internal is mocked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from hypothesis import settings as hypothesis_settings

import tests.fuzzing  # noqa: F401  (registers the fuzzing profiles)
from pipeline.manifest import BuildManifest
from pipeline.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def reference_settings() -> Settings:
    """The project's settings with the build output in ``$VMI_TEST_OUTPUT`` (default
    ``<repo>/work/test-output``) and the build cache in ``<repo>/.cache/vmi``."""
    config = yaml.safe_load((ROOT / "invoke.yaml").read_text())["vmi"]
    output = os.environ.get("VMI_TEST_OUTPUT", str(ROOT / "work" / "test-output"))
    environ = {
        "VMI_OUTPUT_DIR": output,
        "VMI_CACHE_DIR": str(ROOT / ".cache" / "vmi"),
        "VMI_WORK_DIR": str(ROOT / "work"),
    }
    return load_settings(config, ROOT, environ=environ)


@pytest.fixture(scope="session")
def reference_build(reference_settings: Settings) -> tuple[Path, BuildManifest]:
    """The debian-12 reference appliance, built with the real pipeline (Packer + QEMU).

    Returns ``(version_dir, manifest)``. The first run builds (about 5 minutes here); afterwards the
    content-addressed build cache makes this instant until an input changes.
    """
    from pipeline.builder import build_appliance
    from pipeline.log import setup_logging

    setup_logging()
    result = build_appliance(reference_settings, "debian-12")
    return result.version_dir, result.manifest


@pytest.fixture(scope="session")
def reference_build_13(reference_settings: Settings) -> tuple[Path, BuildManifest]:
    """The debian-13 baseline (hybrid BIOS + UEFI disk), built once per session like ``reference_build``."""
    from pipeline.builder import build_appliance
    from pipeline.log import setup_logging

    setup_logging()
    result = build_appliance(reference_settings, "debian-13")
    return result.version_dir, result.manifest
