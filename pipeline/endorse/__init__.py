"""Endorse: audit a built image, endorse it for a VO, and the signed HEPiX image lists sites verify.

``endorse_version`` is what ``invoke endorse`` runs: the policy audit of the local build (refused
unless every check passes or carries a waiver), the report stored with the version in the
catalogue, then the catalogue's endorsement, which checks the caller manages the VO and signs
the VO's next image list.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from pipeline.errors import PolicyError
from pipeline.log import log, step
from pipeline.manifest import MANIFEST_FILE
from pipeline.settings import Settings


class _Catalogue(Protocol):
    """The part of ``pipeline.catalogue.contract.Catalogue`` endorsement uses."""

    def store_audit(self, appliance: str, version: str, report: Mapping[str, Any]) -> None: ...
    def endorse(self, appliance: str, version: str, vo: str) -> Any: ...
    def revoke(self, appliance: str, version: str, vo: str) -> Any: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class EndorseResult:
    appliance: str
    version: str
    vo: str
    revoked: bool
    list_version: int
    list_url: str
    entries: int
    expires: datetime
    audit_summary: str | None = None

    def summary(self) -> str:
        action = "revoked the endorsement of" if self.revoked else "endorsed"
        lines = [self.audit_summary] if self.audit_summary else []
        lines += [
            f"{action} {self.appliance} {self.version} for {self.vo}",
            f"signed image list version {self.list_version}: {self.entries} image(s), "
            f"expires {self.expires:%Y-%m-%dT%H:%M:%SZ}",
            f"  {self.list_url}",
        ]
        return "\n".join(lines)


def _open_catalogue(settings: Settings) -> _Catalogue:
    client = importlib.import_module("pipeline.catalogue.client")
    catalogue: _Catalogue = client.open_catalogue(settings)
    return catalogue


def endorse_version(settings: Settings, name: str, version: str, vo: str, revoke: bool = False) -> EndorseResult:
    """Audit, store the report, and endorse ``name`` ``version`` for ``vo`` (or revoke that endorsement).

    Without a local build of the version the catalogue's stored audit decides (it refuses
    versions without a passing one).
    """
    from pipeline.endorse.audit import AUDIT_FILE, audit_version

    catalogue = _open_catalogue(settings)
    try:
        audit_text = None
        if not revoke:
            if (settings.version_dir(name, version) / MANIFEST_FILE).exists():
                with step(f"policy audit of {name} {version}"):
                    report = audit_version(settings, name, version)
                catalogue.store_audit(name, version, report.to_dict())
                if not report.passed:
                    raise PolicyError(
                        f"{name} {version} fails the policy audit: {', '.join(c.id for c in report.failures)}",
                        hint=f"see {settings.version_dir(name, version) / AUDIT_FILE}; fix the image, or add a "
                        f"waiver with its reason to packer_templates/{name}/audit-waivers.yaml",
                    )
                audit_text = report.summary()
            else:
                log.info("no local build of %s %s: the catalogue's stored audit decides", name, version)
            with step(f"endorse {name} {version} for {vo}"):
                info = catalogue.endorse(name, version, vo)
        else:
            with step(f"revoke {name} {version} for {vo}"):
                info = catalogue.revoke(name, version, vo)
    finally:
        catalogue.close()
    return EndorseResult(name, version, vo, revoke, info.hv_version, info.url, info.entries, info.expires, audit_text)
