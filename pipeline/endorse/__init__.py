"""Endorse: audit a built image, endorse it for a VO, and the signed HEPiX image lists sites verify.

``endorse_version`` is what ``invoke endorse`` runs: the policy audit of the local build (refused
unless every check passes or carries a waiver), the report stored with the version in the
catalogue, then the catalogue's endorsement, which checks the caller manages the VO and signs
the VO's next image list.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pipeline.audit.report import AUDIT_FILE, audit_version, recent_audit
from pipeline.catalogue.client import CascadeInfo, ImageListInfo, open_catalogue
from pipeline.errors import PolicyError
from pipeline.log import log, step
from pipeline.manifest import MANIFEST_FILE
from pipeline.settings import Settings

AUDIT_REUSE = dt.timedelta(hours=24)  # an audit of the same disk with the same waivers this recent is reused


@dataclass(frozen=True)
class EndorseResult:
    appliance: str
    version: str
    vo: str
    revoked: bool
    image_list: ImageListInfo
    audit_summary: str | None = None

    def summary(self) -> str:
        action = "revoked the endorsement of" if self.revoked else "endorsed"
        info = self.image_list
        lines = [self.audit_summary] if self.audit_summary else []
        lines += [
            f"{action} {self.appliance} {self.version} for {self.vo}",
            f"signed image list version {info.hv_version}: {info.entries} image(s), "
            f"expires {info.expires:%Y-%m-%dT%H:%M:%SZ}",
            f"  {info.url}",
        ]
        return "\n".join(lines)


def endorse_version(settings: Settings, name: str, version: str, vo: str, revoke: bool = False) -> EndorseResult:
    """Audit, store the report, and endorse ``name`` ``version`` for ``vo`` (or revoke that endorsement).

    The catalogue checks that the caller manages ``vo`` and signs the VO's next list. Without a
    local build of the version, the audit stored in the catalogue decides (it refuses versions
    without a passing one). The catalogue is opened once and the report stored once.
    """
    catalogue = open_catalogue(settings)
    try:
        audit_text = None
        if revoke:
            with step(f"revoke {name} {version} for {vo}"):
                info = catalogue.revoke(name, version, vo)
        else:
            if (settings.version_dir(name, version) / MANIFEST_FILE).exists():
                report = recent_audit(settings, name, version, AUDIT_REUSE)
                if report is not None:
                    log.info("reusing the audit of %s (same disk, same waivers)", report["audited_at"])
                else:
                    with step(f"policy audit of {name} {version}"):
                        report = audit_version(settings, name, version, store=False).to_dict()
                catalogue.store_audit(name, version, report)
                failed = [c["id"] for c in report["checks"] if c["result"] == "fail"]
                if failed:
                    raise PolicyError(
                        f"{name} {version} fails the policy audit: {', '.join(failed)}",
                        hint=f"see {settings.version_dir(name, version) / AUDIT_FILE}; fix the image, or add a "
                        f"waiver with its reason to packer_templates/{name}/audit-waivers.yaml",
                    )
                waived = sum(c["result"] == "waived" for c in report["checks"])
                audit_text = f"policy audit passed: {len(report['checks'])} checks, {waived} waived"
            else:
                log.info("no local build of %s %s: the catalogue's stored audit decides", name, version)
            with step(f"endorse {name} {version} for {vo}"):
                info = catalogue.endorse(name, version, vo)
    finally:
        catalogue.close()
    return EndorseResult(name, version, vo, revoke, info, audit_text)


@dataclass(frozen=True)
class CascadeResult:
    appliance: str
    version: str
    done: CascadeInfo

    def summary(self) -> str:
        lines = [f"revoked {r.appliance} {r.version} for {r.vo}" for r in self.done.revoked]
        for info in self.done.image_lists:
            lines += [
                f"signed image list of {info.vo} version {info.hv_version}: {info.entries} image(s), "
                f"expires {info.expires:%Y-%m-%dT%H:%M:%SZ}",
                f"  {info.url}",
            ]
        return "\n".join(lines)


def revoke_cascade(settings: Settings, name: str, version: str, vo: str) -> CascadeResult:
    """Revoke ``name`` ``version`` for ``vo`` and every version layered on it, in every VO where those
    are endorsed; the catalogue re-signs each VO list once (``invoke endorse --revoke --cascade``)."""
    catalogue = open_catalogue(settings)
    try:
        with step(f"revoke {name} {version} for {vo} and every version layered on it"):
            return CascadeResult(name, version, catalogue.revoke_cascade(name, version, vo))
    finally:
        catalogue.close()
