"""OCI image-spec documents for a VM image: the manifest EGI's atrope reads, the SBOM referrer, and the
referrers tag-schema index. Pure: data in, canonical bytes out (compact JSON, sorted keys), so every
digest is known before anything is pushed; ``parse_json_object`` is the one reader of such documents
coming back from a registry.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.appliance import Appliance
from pipeline.errors import ArtifactError
from pipeline.manifest import Artifact, BuildManifest

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_BLOB = b"{}"
EMPTY_DESCRIPTOR = {
    "mediaType": EMPTY_TYPE,
    "digest": "sha256:" + hashlib.sha256(EMPTY_BLOB).hexdigest(),
    "size": 2,
}
# layer media types, both from freedesktop's shared-mime-info (the qcow2 one is what EGI pushes):
# *.qcow2 -> application/x-qemu-disk, *.ova -> application/ovf (alias application/x-virtualbox-ova)
DISK_TYPES = {"qcow2": "application/x-qemu-disk", "ova": "application/ovf"}
# Glance's (disk_format, container_format) of each artifact: an OVA is a tar of OVF + stream-optimised VMDK
GLANCE_FORMATS = {"qcow2": ("qcow2", "bare"), "ova": ("vmdk", "ova")}
IMAGE_ARTIFACT_TYPE = "application/vnd.unknown.artifact.v1"  # what `oras push` writes; atrope ignores it
SBOM_TYPE = "application/vnd.cyclonedx+json"
# the default login user of well-known distributions, for definitions that do not name os.admin_user
ADMIN_USERS = {"debian": "debian", "ubuntu": "ubuntu", "almalinux": "almalinux", "rocky": "rocky", "fedora": "fedora"}


def canonical(doc: Mapping[str, Any]) -> bytes:
    """The bytes we put and hash: compact, sorted keys (so the digest is known before the push)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_annotations(appliance: Appliance, manifest: BuildManifest, disk: Artifact) -> dict[str, str]:
    """What atrope 2.1.0 reads from ``layers[0]`` (``eu.egi.cloud.tag`` is required, else it ignores the image)."""
    os_name = appliance.os.distro or (manifest.os.get("name") or appliance.os.name).lower().split()[0]
    disk_format, container_format = GLANCE_FORMATS[disk.format]
    annotations = {
        "eu.egi.cloud.tag": manifest.version,
        "eu.egi.cloud.description": appliance.title,
        "org.openstack.glance.os_distro": os_name,
        "org.openstack.glance.os_version": manifest.os.get("version") or appliance.os.version,
        "org.openstack.glance.os_type": manifest.os.get("family") or appliance.os.family.value,
        "org.openstack.glance.architecture": manifest.arch,
        "org.openstack.glance.disk_format": disk_format,
        "org.openstack.glance.container_format": container_format,
        "org.opencontainers.image.title": Path(disk.name).name,
    }
    admin = appliance.os.admin_user or ADMIN_USERS.get(os_name)
    if admin:
        annotations["org.openstack.glance.os_admin_user"] = str(admin)
    return annotations


def manifest_annotations(appliance: Appliance, manifest: BuildManifest) -> dict[str, str]:
    annotations = {
        "org.opencontainers.image.created": manifest.created,
        "org.opencontainers.image.version": manifest.version,
        "org.opencontainers.image.source": appliance.homepage,
    }
    if manifest.git_commit:
        annotations["org.opencontainers.image.revision"] = manifest.git_commit
    return annotations


def descriptor(media_type: str, digest: str, size: int, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": size, **{k: v for k, v in extra.items() if v}}


def image_manifest(appliance: Appliance, manifest: BuildManifest, disk: Artifact) -> bytes:
    """The OCI 1.1 image manifest of one disk; deterministic, so its digest is known before any push."""
    layer = descriptor(
        DISK_TYPES[disk.format],
        "sha256:" + disk.sha256,
        disk.size,
        annotations=layer_annotations(appliance, manifest, disk),
    )
    return canonical(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "artifactType": IMAGE_ARTIFACT_TYPE,
            "config": EMPTY_DESCRIPTOR,
            "layers": [layer],
            "annotations": manifest_annotations(appliance, manifest),
        }
    )


def sbom_manifest(sbom: bytes, sbom_name: str, subject: bytes, created: str) -> bytes:
    """The SBOM as a referrer of the image manifest ``subject`` (what `oras attach` writes)."""
    return canonical(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "artifactType": SBOM_TYPE,
            "config": EMPTY_DESCRIPTOR,
            "layers": [
                descriptor(
                    SBOM_TYPE,
                    sha256_digest(sbom),
                    len(sbom),
                    annotations={"org.opencontainers.image.title": sbom_name},
                )
            ],
            "subject": descriptor(MANIFEST_TYPE, sha256_digest(subject), len(subject)),
            "annotations": {"org.opencontainers.image.created": created},
        }
    )


def fallback_tag(digest: str) -> str:
    """The referrers tag schema: ``sha256:<hex>`` -> ``sha256-<hex>``."""
    return digest.replace(":", "-")


def parse_json_object(data: bytes, what: str, list_field: str | None = None) -> dict[str, Any]:
    """A manifest or index from a registry: a JSON object (whose ``list_field``, if named, is a list of
    objects), else one clear ``ArtifactError`` naming ``what``."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise ArtifactError(f"{what}: not valid JSON ({e})") from e
    if not isinstance(doc, dict):
        raise ArtifactError(f"{what}: not a JSON object")
    if list_field is not None:
        items = doc.get(list_field, [])
        if not isinstance(items, list) or not all(
            isinstance(x, dict) and isinstance(x.get("digest"), str) for x in items
        ):
            raise ArtifactError(f"{what}: {list_field}: must be a list of descriptors")
    return doc


def referrers_index(existing: bytes | None, referrer: bytes, what: str = "referrers index") -> bytes:
    """The fallback index with ``referrer`` listed (once), keeping whatever else it listed."""
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": []}
    if existing is not None:
        doc = parse_json_object(existing, what, "manifests")
    parsed = parse_json_object(referrer, "referrer")
    entry = descriptor(
        MANIFEST_TYPE,
        sha256_digest(referrer),
        len(referrer),
        artifactType=parsed.get("artifactType"),
        annotations=parsed.get("annotations"),
    )
    if not any(m.get("digest") == entry["digest"] for m in doc.get("manifests", [])):
        doc["manifests"] = [*doc.get("manifests", []), entry]
    return canonical(doc)
