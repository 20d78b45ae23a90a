"""Lineage: the exact base version a layered appliance's version was built on, and whether it is outdated.

The build manifest records the base as ``{"kind": "appliance", "ref": "<name>@<version>"}``; the catalogue
keeps that ref in ``versions.base_ref`` at registration, so pages never read manifests for it. A version
is outdated when that base version is archived, expired, or had endorsements that are all revoked now
(``contract.outdated_reason``: the one rule, also what ``invoke rebuild`` applies to the versions it
reads back).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pipeline.catalogue.contract import NotFound, manifest_base_ref, outdated_reason
from pipeline.catalogue.schemas import LineagePublic

if TYPE_CHECKING:
    from pipeline.catalogue.uow import UnitOfWork


def base_version(manifest: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """``(appliance, version)`` of the base a layered build records, else None (bootstrap or image)."""
    ref = manifest_base_ref(manifest)
    return None if ref is None else split_ref(ref)


def split_ref(ref: str) -> tuple[str, str]:
    """``"<appliance>@<version>"`` -> ``(appliance, version)``."""
    name, _, version = ref.partition("@")
    return name, version


def lineage_of(
    uow: UnitOfWork, base_ref: str | None, now: datetime | None = None
) -> tuple[LineagePublic, datetime | None] | None:
    """The lineage of a version whose ``versions.base_ref`` is ``base_ref`` (None: not layered), and
    until when that answer holds (a current base's expiry: it goes stale then; None: for good)."""
    from pipeline.catalogue import services  # the rule above is also used where no database is open

    if base_ref is None:
        return None
    name, version = split_ref(base_ref)
    now = now or datetime.now(UTC)
    try:
        base = services.get_version(uow, name, version)
    except NotFound:
        return LineagePublic(
            base_appliance=name, base_version=version, outdated=True, reason=f"{name} {version} is not in the catalogue"
        ), None
    reason = outdated_reason(base, now)
    found = LineagePublic(base_appliance=name, base_version=version, outdated=reason is not None, reason=reason)
    return found, None if reason else base.expires
