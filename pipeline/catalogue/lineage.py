"""Lineage: the exact base version a layered appliance's version was built on, and whether it is outdated.

The build manifest records the base as ``{"kind": "appliance", "ref": "<name>@<version>"}``; the catalogue
keeps that ref in ``versions.base_ref`` at registration, so pages never read manifests for it. A version
is outdated when that base version is archived, expired, or had endorsements that are all revoked now
(``contract.outdated_reason``: the one rule, also what ``invoke rebuild`` applies to the versions it
reads back).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pipeline.catalogue.contract import NotFound, manifest_base_ref, outdated_reason

if TYPE_CHECKING:
    from pipeline.catalogue.uow import UnitOfWork


@dataclass(frozen=True)
class Lineage:
    base_appliance: str
    base_version: str
    outdated: bool
    reason: str | None  # why it is outdated
    until: datetime | None = None  # when a current base expires (this answer goes stale then)


def base_version(manifest: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """``(appliance, version)`` of the base a layered build records, else None (bootstrap or image)."""
    ref = manifest_base_ref(manifest)
    return None if ref is None else split_ref(ref)


def split_ref(ref: str) -> tuple[str, str]:
    """``"<appliance>@<version>"`` -> ``(appliance, version)``."""
    name, _, version = ref.partition("@")
    return name, version


def lineage_of(uow: UnitOfWork, base_ref: str | None, now: datetime | None = None) -> Lineage | None:
    """The lineage of a version whose ``versions.base_ref`` is ``base_ref`` (None: not layered)."""
    from pipeline.catalogue import services  # the rule above is also used where no database is open

    if base_ref is None:
        return None
    name, version = split_ref(base_ref)
    now = now or datetime.now(UTC)
    try:
        base = services.get_version(uow, name, version)
    except NotFound:
        return Lineage(name, version, True, f"{name} {version} is not in the catalogue")
    reason = outdated_reason(base, now)
    return Lineage(name, version, reason is not None, reason, None if reason else base.expires)
