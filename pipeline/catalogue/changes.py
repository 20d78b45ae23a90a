"""What changed since the previous version, from what the catalogue holds (version page and API).

Package lists, stored audits and the build manifests' inputs of two registered versions, compared by
``pipeline.formats.versiondiff``. Changelog entries need the image itself: ``invoke diff`` reads them
where it was built.
"""

from __future__ import annotations

from typing import Any

from pipeline.catalogue import services
from pipeline.catalogue.contract import NotFound, VersionInfo
from pipeline.catalogue.uow import UnitOfWork
from pipeline.formats.versiondiff import Changed, VersionDiff, audit_results, mapping_changes, package_changes
from pipeline.manifest import version_sort_key

CHANGELOG_NOTE = "changelog entries are read from the image: `invoke diff --appliance {name} {old} {new}`"


def previous_version(uow: UnitOfWork, name: str, version: VersionInfo) -> str | None:
    """The newest version registered before ``version`` (by creation time, then natural order)."""
    key = (version.created, version_sort_key(version.version))
    earlier = [
        v for v in services.list_versions(uow, name, 0, 500).items if (v.created, version_sort_key(v.version)) < key
    ]
    return max(earlier, key=lambda v: (v.created, version_sort_key(v.version))).version if earlier else None


def _snapshot(uow: UnitOfWork, name: str, version: str) -> tuple[set[tuple[str, str, str]], dict[str, Any]]:
    """Packages (union over the version's images) and the first image's build manifest."""
    images = services.version_images(uow, name, version)
    packages = {(p.name, p.version, p.arch) for d in images for p in d.packages}
    manifest = next((d.manifest for d in images if d.manifest), None) or {}
    return packages, manifest


def _strings(value: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _audit(uow: UnitOfWork, name: str, version: str) -> dict[str, str]:
    view = services.get_audit(uow, name, version)
    if view is None:
        return {}
    return audit_results({"checks": [{"id": c.id, "result": c.result} for c in view.checks]})


def changes_since(uow: UnitOfWork, name: str, version: str, since: str | None = None) -> VersionDiff | None:
    """The difference from ``since`` (default: the previous version) to ``version``; None if it is the first."""
    info = services.get_version(uow, name, version)
    old = since if since is not None else previous_version(uow, name, info)
    if old is None:
        return None
    if old == version:
        raise NotFound(f"{name} {version}: compare it with another version, not itself")
    services.get_version(uow, name, old)  # NotFound names it
    before, old_manifest = _snapshot(uow, name, old)
    after, new_manifest = _snapshot(uow, name, version)
    base = None
    old_base, new_base = _strings(old_manifest.get("base")), _strings(new_manifest.get("base"))
    if old_base != new_base and old_base and new_base:
        base = Changed(
            "base",
            f"{old_base.get('ref', '')} {old_base.get('digest', '')[:19]}",
            f"{new_base.get('ref', '')} {new_base.get('digest', '')[:19]}",
        )
    return VersionDiff(
        name,
        old,
        version,
        tuple(package_changes(before, after)),
        tuple(mapping_changes(_strings(old_manifest.get("inputs")), _strings(new_manifest.get("inputs")))),
        tuple(mapping_changes(_audit(uow, name, old), _audit(uow, name, version))),
        base,
        (CHANGELOG_NOTE.format(name=name, old=old, new=version),),
    )
