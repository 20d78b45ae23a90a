"""The build manifest: what a version is made of and what it produced.

Written by ``build`` to ``<output>/<appliance>/<version>/manifest.json``, extended by ``package``
(artifacts), read by ``publish``, ``audit-image`` and ``rebuild``. JSON, schema-validated, versioned.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from pipeline.errors import ArtifactError, ConfigError
from pipeline.fsutil import Digests, write_text_atomic
from pipeline.schema import validation_errors

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
SCHEMA = "build-manifest"


@dataclass(frozen=True)
class Artifact:
    name: str  # path relative to the version folder
    role: str  # build-disk | ova | qcow2 | raw | vmdk | sha256sums | sha512sums | log
    format: str  # qcow2 | raw | ova | vmdk | text
    size: int
    sha256: str
    sha512: str
    virtual_size: int | None = None

    @classmethod
    def from_digests(
        cls, name: str, role: str, fmt: str, digests: Digests, virtual_size: int | None = None
    ) -> Artifact:
        return cls(name, role, fmt, digests.size, digests.sha256, digests.sha512, virtual_size)


@dataclass(frozen=True)
class InstalledPackage:
    name: str
    version: str
    arch: str
    source: str | None = None
    # what /usr/share/doc/<name>/copyright declares (machine-readable files only; SPDX ids where known)
    licenses: tuple[str, ...] | None = None


@dataclass(frozen=True)
class BaseRef:
    kind: str  # bootstrap | image | appliance
    ref: str
    digest: str
    sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class BuildManifest:
    appliance: str
    version: str
    created: str  # UTC, %Y-%m-%dT%H:%M:%SZ
    inputs_digest: str
    inputs: dict[str, str]
    git_commit: str | None
    tools: dict[str, str]
    accel: str
    os: dict[str, str]
    arch: str
    base: BaseRef
    packages: tuple[InstalledPackage, ...]
    artifacts: tuple[Artifact, ...]
    timings: dict[str, float]
    format_version: int = field(default=FORMAT_VERSION)
    # why the build ran under ``accel`` (the probe's finding, or "kvm failed (...); using tcg")
    accel_note: str | None = None
    # what the disk boots with (appliance ``firmware``) and the image properties clouds need for it
    # (Glance: ``hw_firmware_type=uefi`` for a UEFI-only disk); absent in manifests of older builds
    firmware: str | None = None
    image_properties: dict[str, str] = field(default_factory=dict)

    def artifact(self, role: str) -> Artifact:
        """The (first) artifact with ``role``; ``ArtifactError`` if there is none."""
        for a in self.artifacts:
            if a.role == role:
                return a
        raise ArtifactError(f"{self.appliance} {self.version}: the manifest records no {role} artifact")

    def with_artifacts(self, artifacts: list[Artifact], timings: dict[str, float] | None = None) -> Self:
        """A copy where ``artifacts`` replace any recorded artifacts of the same name."""
        names = {a.name for a in artifacts}
        kept = [a for a in self.artifacts if a.name not in names]
        return dataclasses.replace(self, artifacts=tuple(kept + artifacts), timings={**self.timings, **(timings or {})})

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["base"]["sources"] = list(self.base.sources)
        data["packages"] = [
            {k: list(v) if isinstance(v, tuple) else v for k, v in p.items() if v is not None} for p in data["packages"]
        ]
        data["artifacts"] = list(data["artifacts"])  # asdict keeps tuples; JSON Schema arrays are lists
        if data["firmware"] is None:  # manifests of builds before the firmware field read back unchanged
            del data["firmware"]
        if not data["image_properties"]:
            del data["image_properties"]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<memory>") -> Self:
        problems = validation_errors(SCHEMA, data, source)
        if problems:
            raise ConfigError(problems, hint="the manifest was not written by this version of vmi-pipeline")
        d = dict(data)
        d["base"] = BaseRef(**{**d["base"], "sources": tuple(d["base"].get("sources", ()))})
        d["packages"] = tuple(
            InstalledPackage(**{**p, "licenses": tuple(p["licenses"])} if "licenses" in p else p) for p in d["packages"]
        )
        d["artifacts"] = tuple(Artifact(**a) for a in d["artifacts"])
        return cls(**d)

    def save(self, version_dir: Path) -> Path:
        """Write ``manifest.json`` atomically after validating it against the schema."""
        data = self.to_dict()
        problems = validation_errors(SCHEMA, data, str(version_dir / MANIFEST_FILE))
        if problems:
            raise ArtifactError("refusing to write an invalid manifest:\n" + "\n".join(problems))
        path = version_dir / MANIFEST_FILE
        write_text_atomic(path, self.to_json())
        return path

    @classmethod
    def load(cls, version_dir: Path) -> Self:
        path = version_dir / MANIFEST_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as e:
            raise ArtifactError(f"{path}: no build manifest", hint="run `invoke build` first") from e
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{path}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}") from e
        return cls.from_dict(data, str(path))


_NUM = re.compile(r"([0-9]+)")


def version_sort_key(version: str) -> list[tuple[int, int | str]]:
    """Natural order: 2026.11.22.2 > 2026.11.22.1 > 2026.11.22 > 2026.11.9."""
    return [(0, int(part)) if part.isascii() and part.isdigit() else (1, part) for part in _NUM.split(version) if part]


def list_versions(appliance_output: Path) -> list[str]:
    """Versions with a manifest under ``<output>/<appliance>/``, oldest first."""
    if not appliance_output.is_dir():
        return []
    found = [p.parent.name for p in appliance_output.glob(f"*/{MANIFEST_FILE}")]
    return sorted(found, key=version_sort_key)


def find_version(output_dir: Path, appliance: str, version: str | None = None) -> tuple[Path, BuildManifest]:
    """The version folder and manifest of ``version`` (default: the newest built one)."""
    base = output_dir / appliance
    if version is None:
        versions = list_versions(base)
        if not versions:
            raise ArtifactError(
                f"{base}: no built version of {appliance}", hint=f"run `invoke build --appliance {appliance}`"
            )
        version = versions[-1]
    version_dir = base / version
    return version_dir, BuildManifest.load(version_dir)
