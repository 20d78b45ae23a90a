"""Project settings: where things live and which repository and catalogue to use.

Non-secret defaults are in ``invoke.yaml`` (the ``vmi:`` block); each can be overridden by an
environment variable ``VMI_<NAME>`` (e.g. ``VMI_REPOSITORY=s3://bucket/prefix``). Secrets (tokens,
keys, S3 credentials) come only from the environment, never from files in the repository.

``repository`` may name several repositories separated by spaces (``VMI_REPOSITORY="s3://b/p
oci://registry/project"``): publish uploads to and verifies every one; the first is the primary (its
URLs go into the signed image lists; audit, retention and serve use it), the others are mirrors.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class Settings:
    root: Path  # the project checkout: packer_templates/, provisioners/, ovf/ live here
    output_dir: Path  # per-version build and package outputs: <output_dir>/<appliance>/<version>/
    work_dir: Path  # scratch space for builds (rootfs tarballs, Packer temp files); safe to delete
    cache_dir: Path  # content-addressed caches (bootstrap tarballs), survives `clean`
    repository: str  # file:///path or s3://bucket/prefix
    repository_public_url: str  # how sites download what is in the repository
    catalogue: str  # sqlite:///path | postgresql+psycopg://... (in-process) or http(s)://host (REST API)
    catalogue_public_url: str  # base URL of the catalogue's web pages and image lists
    s3_endpoint_url: str | None
    s3_profile: str | None
    accel: str  # auto | kvm | tcg
    mirror_repositories: tuple[str, ...] = ()  # further repositories publish writes to (after the primary)

    @property
    def templates_dir(self) -> Path:
        return self.root / "packer_templates"

    @property
    def provisioners_dir(self) -> Path:
        return self.root / "provisioners"

    @property
    def ovf_dir(self) -> Path:
        return self.root / "ovf"

    def version_dir(self, appliance: str, version: str) -> Path:
        return self.output_dir / appliance / version


_FIELDS = [f.name for f in dataclasses.fields(Settings) if f.name not in ("root", "mirror_repositories")]
_PATHS = {"output_dir", "work_dir", "cache_dir"}


def load_settings(config: Mapping[str, Any], root: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Build ``Settings`` from the ``vmi:`` mapping of invoke's config plus ``VMI_*`` environment overrides.

    Relative paths and ``file://./x`` URLs are taken relative to ``root``.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    unknown = sorted(set(config) - set(_FIELDS))
    if unknown:
        raise ConfigError([f"invoke.yaml: vmi.{k}: is not a known setting" for k in unknown])
    missing = []
    for name in _FIELDS:
        # an empty variable counts as unset (CI systems export unset repository variables as "")
        value = env.get(f"VMI_{name.upper()}") or config.get(name)
        if value is None and name not in ("s3_endpoint_url", "s3_profile"):
            missing.append(f"invoke.yaml: vmi.{name}: is required")
        values[name] = value
    if missing:
        raise ConfigError(missing)
    for name in _PATHS:
        p = Path(str(values[name])).expanduser()
        values[name] = p if p.is_absolute() else (root / p)
    urls = str(values["repository"]).split()
    if not urls:
        raise ConfigError("invoke.yaml: vmi.repository: is empty")
    if len(set(urls)) != len(urls):
        raise ConfigError(f"invoke.yaml: vmi.repository: {values['repository']!r} names a repository twice")
    values["repository"], values["mirror_repositories"] = urls[0], tuple(urls[1:])

    def local(v: str) -> str:
        return "file://" + str((root / v[len("file://./") :]).resolve()) if v.startswith("file://./") else v

    values["repository"] = local(values["repository"])
    values["mirror_repositories"] = tuple(local(u) for u in values["mirror_repositories"])
    values["repository_public_url"] = local(str(values["repository_public_url"]))
    cat = str(values["catalogue"])
    if cat.startswith("sqlite:///./"):
        values["catalogue"] = "sqlite:///" + str((root / cat[len("sqlite:///./") :]).resolve())
    if values["accel"] not in ("auto", "kvm", "tcg"):
        raise ConfigError(f"invoke.yaml: vmi.accel: {values['accel']!r} is not one of auto, kvm, tcg")
    return Settings(root=root.resolve(), **values)


def repository_urls(settings: Settings) -> tuple[str, ...]:
    """Every repository publish writes to: the primary first, then the mirrors."""
    return (settings.repository, *settings.mirror_repositories)
