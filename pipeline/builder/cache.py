"""Content-addressed build cache: a build is identified by the digest of everything that decides it
(template, variables, provisioners, base, tool versions); an unchanged build is a no-op.

Also picks the version name of a new build (``YYYY.MM.DD``, then ``.1``, ``.2`` the same day).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from pipeline.appliance import Appliance
from pipeline.errors import PipelineError
from pipeline.fsutil import hash_file
from pipeline.manifest import BuildManifest, list_versions


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def compute_inputs(
    appliance: Appliance, provisioners_dir: Path, base_component: str, tools: Mapping[str, str]
) -> dict[str, str]:
    """Each input of a build -> its sha256: the components the digest is made of, kept in the manifest
    so that a changed build can say *what* changed."""
    inputs = {"template": hash_file(appliance.template_path).sha256}
    settings_doc = {
        "variables": appliance.variables,
        "hardware": {"disk_gb": appliance.hardware.disk_gb},
        # os.distro and os.admin_user only label the published image: not build inputs
        "os": {k: v for k, v in appliance.to_dict()["os"].items() if k not in ("distro", "admin_user")},
        "arch": appliance.arch.value,
        "provisioners": list(appliance.provisioners),
    }
    inputs["variables"] = _sha256_text(json.dumps(settings_doc, sort_keys=True))
    for name, path in zip(appliance.provisioners, appliance.provisioner_paths(provisioners_dir), strict=True):
        inputs[f"provisioner:{name}"] = hash_file(path).sha256
    inputs["base"] = _sha256_text(base_component)
    for tool, version in sorted(tools.items()):
        inputs[f"tool:{tool}"] = _sha256_text(version)
    return inputs


def inputs_digest(inputs: Mapping[str, str]) -> str:
    """One digest over all input components (order-independent)."""
    return _sha256_text("".join(f"{k}={v}\n" for k, v in sorted(inputs.items())))


def find_up_to_date(appliance_output: Path, digest: str) -> tuple[Path, BuildManifest] | None:
    """The newest built version made from exactly these inputs whose disk is still intact on disk."""
    for version in reversed(list_versions(appliance_output)):
        version_dir = appliance_output / version
        try:
            manifest = BuildManifest.load(version_dir)
            disk = manifest.artifact("build-disk")
        except PipelineError:
            continue
        path = version_dir / disk.name
        if manifest.inputs_digest == digest and path.is_file() and path.stat().st_size == disk.size:
            return version_dir, manifest
    return None


def next_version(appliance_output: Path, today: dt.date) -> str:
    """``YYYY.MM.DD`` for the first build of the day, then ``YYYY.MM.DD.1``, ``.2``..."""
    stem = today.strftime("%Y.%m.%d")
    taken = {p.name for p in appliance_output.iterdir()} if appliance_output.is_dir() else set()
    if stem not in taken:
        return stem
    n = 1
    while f"{stem}.{n}" in taken:
        n += 1
    return f"{stem}.{n}"
