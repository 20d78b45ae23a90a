"""Lineage: the exact base version a layered appliance's version was built on, and whether it is outdated.

The build manifest records the base as ``{"kind": "appliance", "ref": "<name>@<version>"}``; a version
is outdated when that base version is archived, expired, or had endorsements that are all revoked now.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pipeline.catalogue import services
from pipeline.catalogue.contract import NotFound
from pipeline.catalogue.uow import UnitOfWork


@dataclass(frozen=True)
class Lineage:
    base_appliance: str
    base_version: str
    outdated: bool
    reason: str | None  # why it is outdated


def base_version(manifest: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """``(appliance, version)`` of the base a layered build records, else None (bootstrap or image)."""
    base = (manifest or {}).get("base")
    if not isinstance(base, Mapping) or base.get("kind") != "appliance":
        return None
    name, at, version = str(base.get("ref", "")).partition("@")
    return (name, version) if at and name and version else None


def lineage_of(uow: UnitOfWork, manifest: Mapping[str, Any] | None, now: datetime | None = None) -> Lineage | None:
    found = base_version(manifest)
    if found is None:
        return None
    name, version = found
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
