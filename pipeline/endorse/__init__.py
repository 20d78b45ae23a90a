"""Endorse: audit a built image, endorse it for a VO, and the signed HEPiX image lists sites verify.

``endorse_version`` is what ``invoke endorse`` runs: the policy audit of the local build (refused
unless every check passes or carries a waiver), the report stored with the version in the
catalogue, then the catalogue's endorsement, which checks the caller manages the VO and signs
the VO's next image list. ``endorse_published`` is the recipe's step: it audits the build the
publish step returned. Once the list is signed, ``endorsed-<vo>.json`` is written in the version
folder (when there is a local build): the receipt ``EndorseResult.load`` rebuilds the result from.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from pipeline.appliance import Appliance, find_appliance
from pipeline.audit.report import AUDIT_FILE, audit_and_record, recent_audit
from pipeline.catalogue.client import CascadeInfo, ImageListInfo, open_catalogue
from pipeline.errors import PolicyError, ReceiptError
from pipeline.log import log, step
from pipeline.manifest import MANIFEST_FILE, BuildManifest, find_version
from pipeline.publish import PUBLISHED_FILE, PublishResult
from pipeline.receipt import from_json, read_receipt, reading, to_json, write_receipt
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

    @classmethod
    def load(cls, settings: Settings, name: str, version: str, vo: str) -> EndorseResult:
        """The last endorsement (or revocation) of ``name`` ``version`` for ``vo`` made from this machine,
        as its receipt records it; nothing is asked of the catalogue."""
        path = endorsed_path(settings.version_dir(name, version), vo)
        hint = f"run `invoke endorse {name} {version} {vo}`"
        data = read_receipt(path, "endorse", f"{name} {version} was never endorsed for {vo} here", hint)
        with reading(path, hint):
            result = from_json(cls, data["result"])
        if (result.appliance, result.version, result.vo) != (name, version, vo):
            raise ReceiptError(f"{path}: records {result.appliance} {result.version} for {result.vo}", hint)
        return result

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


def endorsed_path(version_dir: Path, vo: str) -> Path:
    """The receipt of ``vo``'s endorsement in a version folder (the VO name quoted into one file name)."""
    return version_dir / f"endorsed-{quote(vo, safe='')}.json"


def _record(settings: Settings, result: EndorseResult) -> None:
    """Write the receipt once the catalogue signed the list, if the version was built here (the
    receipt goes with the build; a version endorsed from its stored audit alone has no folder)."""
    version_dir = settings.version_dir(result.appliance, result.version)
    if (version_dir / MANIFEST_FILE).is_file():
        write_receipt(endorsed_path(version_dir, result.vo), "endorse", {"result": to_json(result)})


@dataclass(frozen=True)
class LocalBuild:
    """The build of the version on this machine, whose disk the policy audit reads."""

    definition: Appliance
    version_dir: Path
    manifest: BuildManifest


def endorse_published(settings: Settings, published: PublishResult, vo: str) -> EndorseResult:
    """The recipe's endorse step: audit the build the publish step registered (no file read again), then
    endorse it for ``vo``. The audit the recipe made before publish, which publish stored, is not stored
    again."""
    plan = published.plan
    local = LocalBuild(plan.appliance, plan.version_dir, plan.manifest)
    return _endorse(settings, plan.appliance.name, plan.manifest.version, vo, local, published.audit_stored)


def endorse_version(settings: Settings, name: str, version: str, vo: str, revoke: bool = False) -> EndorseResult:
    """Audit, store the report, and endorse ``name`` ``version`` for ``vo`` (or revoke that endorsement).

    The catalogue checks that the caller manages ``vo`` and signs the VO's next list. A version published
    from here resumes from its publish receipt (``PublishResult.load``: the local build is the one
    registered); another local build of it is audited as it is. Without a local build, the audit stored in
    the catalogue decides (it refuses versions without a passing one). The catalogue is opened once and
    the report stored once.
    """
    if revoke:
        return _revoke(settings, name, version, vo)
    version_dir = settings.version_dir(name, version)
    local = None
    if (version_dir / MANIFEST_FILE).exists():
        definition = find_appliance(settings.templates_dir, name, settings.provisioners_dir)
        if (version_dir / PUBLISHED_FILE).exists():  # published from here: resume from the receipt
            plan = PublishResult.load(settings, definition, version).plan
            local = LocalBuild(definition, plan.version_dir, plan.manifest)
        else:
            local = LocalBuild(definition, *find_version(settings.output_dir, name, version))
    return _endorse(settings, name, version, vo, local)


def _endorse(
    settings: Settings, name: str, version: str, vo: str, local: LocalBuild | None, stored: bool = False
) -> EndorseResult:
    """``stored``: the saved ``audit.json`` is in the catalogue already (publish stored it in this run)."""
    catalogue = open_catalogue(settings)
    try:
        audit_text = None
        if local is not None:
            report = recent_audit(local.definition, local.version_dir, local.manifest, AUDIT_REUSE)
            if report is not None:
                log.info("reusing the audit of %s (same disk, same waivers)", report["audited_at"])
            else:
                with step(f"policy audit of {name} {version}"):
                    made = audit_and_record(settings, local.definition, local.version_dir, local.manifest, False)
                    report = made.to_dict()
                stored = False
            if not stored:
                catalogue.store_audit(name, version, report)
            failed = [c["id"] for c in report["checks"] if c["result"] == "fail"]
            if failed:
                raise PolicyError(
                    f"{name} {version} fails the policy audit: {', '.join(failed)}",
                    hint=f"see {local.version_dir / AUDIT_FILE}; fix the image, or add a "
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
    result = EndorseResult(name, version, vo, False, info, audit_text)
    _record(settings, result)
    return result


def _revoke(settings: Settings, name: str, version: str, vo: str) -> EndorseResult:
    catalogue = open_catalogue(settings)
    try:
        with step(f"revoke {name} {version} for {vo}"):
            info = catalogue.revoke(name, version, vo)
    finally:
        catalogue.close()
    result = EndorseResult(name, version, vo, True, info)
    _record(settings, result)
    return result


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
            done = catalogue.revoke_cascade(name, version, vo)
    finally:
        catalogue.close()
    lists = {info.vo: info for info in done.image_lists}
    for r in done.revoked:  # each revoked endorsement's receipt now says so (where it was built here)
        if r.vo in lists:
            _record(settings, EndorseResult(r.appliance, r.version, r.vo, True, lists[r.vo]))
    return CascadeResult(name, version, done)
