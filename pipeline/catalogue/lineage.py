"""Lineage: the exact base version a layered appliance's version was built on, and whether it is outdated.

The build manifest records the base as ``{"kind": "appliance", "ref": "<name>@<version>"}``; the catalogue
keeps that ref in ``versions.base_ref`` at registration, so pages never read manifests for it. A version
is outdated when that base version is archived, expired, or had endorsements that are all revoked now.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pipeline.catalogue import services
from pipeline.catalogue.contract import NotFound, manifest_base_ref
from pipeline.catalogue.uow import UnitOfWork


@dataclass(frozen=True)
class Lineage:
    base_appliance: str
    base_version: str
    outdated: bool
    reason: str | None  # why it is outdated


def base_version(manifest: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """``(appliance, version)`` of the base a layered build records, else None (bootstrap or image)."""
    ref = manifest_base_ref(manifest)
    return None if ref is None else _split(ref)


def _split(ref: str) -> tuple[str, str]:
    name, _, version = ref.partition("@")
    return name, version


def lineage_of(uow: UnitOfWork, base_ref: str | None, now: datetime | None = None) -> Lineage | None:
    """The lineage of a version whose ``versions.base_ref`` is ``base_ref`` (None: not layered)."""
    if base_ref is None:
        return None
    name, version = _split(base_ref)
    now = now or datetime.now(UTC)
    try:
        base = services.get_version(uow, name, version)
    except NotFound:
        return Lineage(name, version, True, f"{name} {version} is not in the catalogue")
    reason = None
    if base.archived:
        reason = f"{name} {version} is archived"
    elif base.expires <= now:
        reason = f"{name} {version} expired on {base.expires:%Y-%m-%d}"
    elif base.endorsements and all(e.revoked_at is not None for e in base.endorsements):
        vos = ", ".join(sorted(e.vo for e in base.endorsements))
        reason = f"{name} {version} is revoked ({vos})"
    return Lineage(name, version, reason is not None, reason)
