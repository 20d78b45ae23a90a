"""What a build registers in the catalogue: the appliance and version payloads from its definition and manifest.

The one place that turns the stages' types (``Appliance``, ``BuildManifest``) into the catalogue's
plain payloads (``contract.AppliancePayload``, ``contract.VersionPayload``), so the catalogue's
contract depends on neither.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pipeline.appliance import Appliance
from pipeline.catalogue.contract import AppliancePayload, InvalidPayload, VersionPayload, validated
from pipeline.manifest import BuildManifest

# Roles of manifest artifacts that are published as images, and their catalogue format.
PUBLISHED_ROLES: Mapping[str, str] = {"ova": "ova", "qcow2": "qcow2", "raw": "raw", "vmdk": "vmdk"}


def appliance_payload(appliance: Appliance) -> AppliancePayload:
    """The catalogue entry of an appliance definition (``InvalidPayload`` if the catalogue would refuse it)."""
    data = {"name": appliance.name, "title": appliance.title, "description": appliance.description}
    return validated(AppliancePayload, data | {"vos": list(appliance.vos)}, f"appliance {appliance.name}")


def version_payload_from_build(
    appliance: Appliance,
    manifest: BuildManifest,
    uris: Mapping[str, str],
    notes: str | None = None,
    expires: datetime | None = None,
    locations: Mapping[str, Sequence[str]] | None = None,
    sbom: str | None = None,
) -> VersionPayload:
    """The registration of a built version: one image per published artifact in ``uris``.

    ``uris`` maps an artifact name (as in the manifest) to where it was uploaded. Artifacts whose role
    is not a published image (build disk, sums, logs) are refused, so a typo cannot register a log.
    ``locations`` maps an artifact name to every repository URL of it (publish to several repositories).
    The catalogue's rules (``schemas.VersionRecord``) are applied here: ``InvalidPayload`` names each
    field they refuse.
    """
    by_name = {a.name: a for a in manifest.artifacts}
    problems = [
        f"{name}: not an artifact of {manifest.appliance} {manifest.version}" for name in uris if name not in by_name
    ]
    problems += [
        f"{name}: role {by_name[name].role} is not a published image role ({', '.join(PUBLISHED_ROLES)})"
        for name in uris
        if name in by_name and by_name[name].role not in PUBLISHED_ROLES
    ]
    if problems:
        raise InvalidPayload(problems)
    manifest_json = manifest.to_dict()
    packages = [{"name": p.name, "version": p.version, "arch": p.arch} for p in manifest.packages]
    hw = appliance.hardware
    images = [
        dict(
            uri=uri,
            format=PUBLISHED_ROLES[by_name[name].role],
            size=by_name[name].size,
            sha512=by_name[name].sha512,
            sha256=by_name[name].sha256,
            arch=manifest.arch,
            os_family=manifest.os.get("family", appliance.os.family.value),
            os_name=manifest.os.get("name", appliance.os.name),
            os_version=manifest.os.get("version", appliance.os.version),
            min_cores=hw.cores_min,
            recommended_cores=hw.cores_recommended,
            min_ram_mb=hw.ram_min_mb,
            recommended_ram_mb=hw.ram_recommended_mb,
            title=f"{appliance.title} ({PUBLISHED_ROLES[by_name[name].role]})",
            manifest=manifest_json,
            packages=packages,
            locations=list(dict.fromkeys([uri, *(locations or {}).get(name, ())])) if locations else [],
        )
        for name, uri in sorted(uris.items())
    ]
    text = notes if notes is not None else f"{appliance.title} {manifest.version}, built {manifest.created}"
    data: dict[str, Any] = {
        "appliance": manifest.appliance,
        "version": manifest.version,
        "notes": text,
        "images": images,
    }
    data |= {"expires": expires} if expires is not None else {}
    data |= {"sbom": sbom} if sbom is not None else {}
    return validated(VersionPayload, data, f"{manifest.appliance} {manifest.version}")
