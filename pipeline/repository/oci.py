"""An OCI registry as the repository (``oci://HOST[:PORT]/PROJECT``), the way EGI distributes images.

Each version becomes, in repository ``PROJECT/<appliance>``, an OCI 1.1 image manifest whose single
layer is the qcow2 (``application/x-qemu-disk``) carrying the annotations EGI's atrope reads on
``layers[0]``; the config is the OCI empty descriptor. Tags: ``<os_version>-<version>`` (immutable)
and the rolling ``<os_version>``, or what the definition's ``oci`` templates say. The OVA is a second
artifact of the same shape (layer ``application/ovf``) under the same tags plus ``-ova``, so a
'-'-free sync pattern (EGI's) never takes it. The CycloneDX SBOM is attached to each as a referrer
(``subject`` = the image manifest) and listed under the referrers tag-schema fallback ``sha256-<hex>``
when the registry has no referrers API (CNCF distribution has none).

The order is the guarantee: blobs (streamed from disk in chunks, hashed while read, skipped when a
HEAD finds them) -> every blob read back and hashed -> the manifest put by digest and read back ->
the SBOM referrer (and its fallback index) -> the long tag -> re-read by tag -> the rolling tag
(never moved back to an older version). A killed push leaves at most untagged blobs or
an untagged manifest, never a tag on a partial artifact; running it again finishes it.

Plain ``requests`` against the distribution API (no oras-py: it reads whole files into memory on
monolithic uploads and never checks digests on reads). TLS is always verified: ``VMI_OCI_CA`` names
a private CA and wins over ``REQUESTS_CA_BUNDLE``/``SSL_CERT_FILE``; plain HTTP (``insecure``) is
allowed for loopback hosts only.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests

from pipeline.appliance import OVA_TAG_SUFFIX, Appliance
from pipeline.errors import ArtifactError, ConfigError, UploadError
from pipeline.formats.oci import (
    EMPTY_BLOB,
    EMPTY_DESCRIPTOR,
    INDEX_TYPE,
    MANIFEST_TYPE,
    fallback_tag,
    image_manifest,
    parse_json_object,
    referrers_index,
    sbom_manifest,
    sha256_digest,
)
from pipeline.fsutil import Digests
from pipeline.log import log
from pipeline.manifest import Artifact, BuildManifest, version_sort_key
from pipeline.repository import ObjectInfo, PutOutcome, PutResult, Sink, UploadJournal, UploadTuning, compare
from pipeline.repository.oci_client import RegistryClient, load_credentials, tls_verify

_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_NAME = re.compile(r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$")


# -- where: the URL, the tags, the reference -------------------------------------------------------


@dataclass(frozen=True)
class OciLocation:
    host: str  # host[:port] as in references
    project: str
    scheme: str  # https, or http for an --insecure loopback registry

    @property
    def url(self) -> str:
        return f"oci://{self.host}/{self.project}"

    def repository(self, appliance: str) -> str:
        name = f"{self.project}/{appliance}"
        if not _NAME.match(name):
            raise ConfigError(f"oci repository name {name!r} is not valid (lower-case letters, digits, . _ - and /)")
        return name

    def reference(self, appliance: str, tag: str, digest: str | None = None) -> str:
        ref = f"{self.host}/{self.repository(appliance)}:{tag}"
        return f"{ref}@{digest}" if digest else ref


def is_loopback(host: str) -> bool:
    hostname = urlsplit(f"//{host}").hostname or ""
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def parse_oci_url(url: str, insecure: bool = False) -> OciLocation:
    parts = urlsplit(url)
    project = parts.path.strip("/")
    if parts.scheme != "oci" or not parts.netloc or not project or parts.query or parts.fragment:
        raise ConfigError(
            f"VMI_REPOSITORY: {url!r}: an OCI repository is oci://HOST[:PORT]/PROJECT",
            hint="e.g. oci://registry.egi.eu/egi_vm_images",
        )
    if "@" in parts.netloc:
        raise ConfigError(
            f"VMI_REPOSITORY: {url!r}: credentials do not go in the URL",
            hint="use VMI_OCI_USERNAME/VMI_OCI_PASSWORD or `podman login`",
        )
    if not _NAME.match(project):
        raise ConfigError(f"VMI_REPOSITORY: {url!r}: project {project!r} is not a valid repository name prefix")
    if insecure and not is_loopback(parts.netloc):
        raise ConfigError(
            f"--insecure: {parts.netloc} is not a loopback address",
            hint="plain HTTP is for a test registry on this machine only; use TLS (VMI_OCI_CA for a private CA)",
        )
    return OciLocation(parts.netloc, project, "http" if insecure else "https")


def image_tags(appliance: Appliance, manifest: BuildManifest, role: str = "qcow2") -> tuple[str, str | None]:
    """(long, rolling or None) from the definition's ``oci`` templates (default ``<os_version>-<version>``
    and ``<os_version>``: EGI's atrope syncs only tags without '-'); the OVA's carry the suffix ``-ova``,
    so the same repository holds both and a '-'-free tag pattern never picks the OVA."""
    os_version = manifest.os.get("version") or appliance.os.version
    long_tag, rolling = appliance.oci.render(appliance.name, os_version, manifest.arch, manifest.version)
    if role == "ova":
        long_tag, rolling = long_tag + OVA_TAG_SUFFIX, rolling and rolling + OVA_TAG_SUFFIX
    for field, tag in (("oci.tag", long_tag), ("oci.rolling_tag", rolling)):
        if tag is not None and not _TAG.match(tag):
            raise ConfigError(f"{appliance.definition_path}: {field}: makes {tag!r}, not a valid OCI tag")
    return long_tag, rolling


# -- the repository ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OciImagePlan:
    """One disk image as an OCI artifact: what will be pushed, under which tags."""

    repository: str  # project/appliance
    reference: str  # host/project/appliance:long-tag@sha256:... (the catalogue's image URI)
    tags: tuple[str, str | None]  # long (immutable), rolling (None: the definition names none)
    disk: Artifact
    image: bytes  # the image manifest
    sbom: bytes
    sbom_name: str
    referrer: bytes  # the SBOM manifest, subject = image

    @property
    def digest(self) -> str:
        return sha256_digest(self.image)

    @property
    def fallback_tag(self) -> str:
        return fallback_tag(self.digest)

    def describe(self) -> str:
        """What --dry-run prints: references, tags, both manifests with their annotations."""
        host = self.reference.split("/", 1)[0]
        lines = [f"  image {self.reference}"]
        lines += [f"  tag   {host}/{self.repository}:{t}" for t in self.tags if t]
        lines.append(f"  layer {self.disk.name} ({self.disk.size} bytes, sha256:{self.disk.sha256})")
        lines.append("  image manifest:")
        lines += ["    " + x for x in json.dumps(json.loads(self.image), indent=2, sort_keys=True).splitlines()]
        lines.append(f"  SBOM referrer {sha256_digest(self.referrer)} (fallback tag {self.fallback_tag}):")
        lines += ["    " + x for x in json.dumps(json.loads(self.referrer), indent=2, sort_keys=True).splitlines()]
        return "\n".join(lines)


@dataclass(frozen=True)
class OciPush:
    """One artifact pushed, proved and tagged."""

    reference: str
    blob: PutOutcome  # the disk blob: UPLOADED, or PRESENT (already in the registry, read back and proved)
    size: int
    seconds: float
    rolling: str | None  # the rolling tag, if it now names this image (never moved back to an older one)


class OciRepository:
    """The ``Repository`` protocol over a registry, plus ``push_image`` (what publish uses).

    Keys are ``<appliance>:<tag>``; ``public_url`` gives the reference; ``verify`` reads the
    manifest and re-hashes its layer, so ``audit`` works against a registry too.
    """

    def __init__(
        self, url: str, tuning: UploadTuning, insecure: bool = False, environ: Mapping[str, str] | None = None
    ) -> None:
        env = os.environ if environ is None else environ
        self.location = parse_oci_url(url, insecure)
        self.url = self.location.url
        self.tuning = tuning
        self.client = RegistryClient(
            self.location.host,
            self.location.scheme,
            load_credentials(self.location.host, env),
            True if insecure else tls_verify(env),
            attempts=tuning.attempts,
            backoff=tuning.backoff,
        )

    # - Repository protocol -

    def preflight(self) -> None:
        self.client.ping()

    def _split(self, key: str) -> tuple[str, str]:
        appliance, sep, tag = key.partition(":")
        if not sep or not _TAG.match(tag):
            raise UploadError(f"oci key {key!r} is not <appliance>:<tag>")
        return self.location.repository(appliance), tag

    def put(self, key: str, path: Path, expected: Digests, journal: UploadJournal | None = None) -> PutResult:
        raise UploadError(f"{self.url}: files go to a registry as images (push_image), not by key ({key})")

    def head(self, key: str) -> ObjectInfo | None:
        repo, tag = self._split(key)
        found = self.client.get_manifest(repo, tag)
        if found is None:
            return None
        layers = parse_json_object(found[0], f"{self.url}: {key}", "layers").get("layers", [])
        size = int(layers[0].get("size", 0)) if layers else 0
        return ObjectInfo(key, size, {"manifest": found[1]})

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def verify(self, key: str, expected: Digests) -> list[str]:
        repo, tag = self._split(key)
        found = self.client.get_manifest(repo, tag)
        if found is None:
            return [f"{key}: no such tag in {self.url}"]
        layers = parse_json_object(found[0], f"{self.url}: {key}", "layers").get("layers", [])
        if len(layers) != 1:
            return [f"{key}: {len(layers)} layers, expected one"]
        return compare(key, expected, self.client.blob_digests(repo, layers[0]["digest"], expected.size))

    def fetch(self, key: str, target: Sink, max_bytes: int) -> int:
        """The image's one layer (the disk), as ``verify`` reads it; the caller checks its digests."""
        repo, tag = self._split(key)
        found = self.client.get_manifest(repo, tag)
        if found is None:
            raise ArtifactError(f"{self.url}: {key} is missing")
        layers = parse_json_object(found[0], f"{self.url}: {key}", "layers").get("layers", [])
        if len(layers) != 1:
            raise ArtifactError(f"{self.url}: {key}: {len(layers)} layers, expected one (the disk)")
        size = 0
        for chunk in self.client.read_blob(repo, str(layers[0]["digest"]), max_bytes):
            size += len(chunk)
            target.write(chunk)
        return size

    def delete(self, key: str) -> None:
        """Retention: delete a version's image manifest (so its tags) and its referrers (SBOM, fallback
        index). Refused while another tag (the rolling one) still points at it: that would unpublish
        the current image."""
        repo, tag = self._split(key)
        found = self.client.get_manifest(repo, tag)
        if found is None:
            return
        digest = found[1]
        for other in self.client.list_tags(repo):
            if other == tag or other.startswith("sha256-"):
                continue
            current = self.client.get_manifest(repo, other)
            if current is not None and current[1] == digest:
                raise UploadError(
                    f"{self.location.host}/{repo}:{tag}: the rolling tag {other} still points at it; not deleted",
                    hint="publish a newer version first",
                )
        index = self.client.get_manifest(repo, fallback_tag(digest))
        if index is not None:
            listed = parse_json_object(index[0], f"{self.url}: {repo}:{fallback_tag(digest)}", "manifests")
            for referrer in listed.get("manifests", []):
                self.client.delete_manifest(repo, str(referrer["digest"]))
            self.client.delete_manifest(repo, index[1])
        self.client.delete_manifest(repo, digest)
        log.info("deleted %s/%s:%s (%s) and its referrers", self.location.host, repo, tag, digest)

    def iter_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return iter(())  # a registry lists repositories only through its own (Harbor) API

    def public_url(self, key: str) -> str:
        repo, tag = self._split(key)
        return f"oci://{self.location.host}/{repo}:{tag}"

    def key_for_url(self, url: str) -> str | None:
        """``oci://host/project/appliance:tag@digest`` (what the catalogue records) -> ``appliance:tag``."""
        url = url.removeprefix("oci://")
        root = f"{self.location.host}/{self.location.project}/"
        if not url.startswith(root):
            return None
        return url[len(root) :].split("@")[0]

    # - publishing -

    def plan_image(
        self, appliance: Appliance, manifest: BuildManifest, sbom: bytes, sbom_name: str, role: str = "qcow2"
    ) -> OciImagePlan:
        """Every manifest, tag and reference of one artifact's push (``role`` qcow2 or ova), worked out
        before anything is sent (--dry-run)."""
        disk = manifest.artifact(role)
        long_tag, rolling = image_tags(appliance, manifest, role)
        image = image_manifest(appliance, manifest, disk)
        digest = sha256_digest(image)
        return OciImagePlan(
            repository=self.location.repository(appliance.name),
            reference=self.location.reference(appliance.name, long_tag, digest),
            tags=(long_tag, rolling),
            disk=disk,
            image=image,
            sbom=sbom,
            sbom_name=sbom_name,
            referrer=sbom_manifest(sbom, sbom_name, image, manifest.created),
        )

    def push_image(self, plan: OciImagePlan, disk_path: Path) -> OciPush:
        """Push, prove and tag one disk image with its SBOM referrer; see the module docstring for the order."""
        client, repo, disk = self.client, plan.repository, plan.disk
        long_tag, rolling = plan.tags
        expected = Digests(disk.size, disk.sha256, disk.sha512)
        start = time.monotonic()
        existing = client.get_manifest(repo, long_tag)
        if existing is not None and existing[1] != plan.digest:
            raise UploadError(
                f"{self.location.host}/{repo}:{long_tag} already points at {existing[1]}, "
                f"not at this build's {plan.digest}",
                hint="a published tag is immutable: build and publish a new version",
            )
        client.push_bytes(repo, EMPTY_BLOB)
        uploaded = client.push_file(repo, disk_path, expected)
        sbom_digest = client.push_bytes(repo, plan.sbom)
        # every blob read back by digest before any manifest names it
        for what, blob_digest, want in (
            ("the disk", "sha256:" + disk.sha256, expected),
            ("the SBOM", sbom_digest, _digests(plan.sbom)),
            ("the empty config", str(EMPTY_DESCRIPTOR["digest"]), _digests(EMPTY_BLOB)),
        ):
            problems = compare(f"{repo}@{blob_digest}", want, client.blob_digests(repo, blob_digest, want.size))
            if problems:
                raise UploadError(f"{self.url}: {what} read back is not what was sent: " + "; ".join(problems))
        self._put_proved(repo, plan.digest, plan.image, MANIFEST_TYPE)
        reply = self._put_proved(repo, sha256_digest(plan.referrer), plan.referrer, MANIFEST_TYPE)
        if "OCI-Subject" not in reply.headers:  # no referrers API: keep the tag-schema index up to date
            current = client.get_manifest(repo, plan.fallback_tag)
            index = referrers_index(current[0] if current else None, plan.referrer, f"{repo}:{plan.fallback_tag}")
            if current is None or current[0] != index:
                self._put_proved(repo, plan.fallback_tag, index, INDEX_TYPE)
        self._put_proved(repo, long_tag, plan.image, MANIFEST_TYPE)
        moved = rolling is not None and self._rolling_may_move(repo, rolling, plan)
        if moved and rolling is not None:  # only once the long tag is proved
            self._put_proved(repo, rolling, plan.image, MANIFEST_TYPE)
        outcome = PutOutcome.UPLOADED if uploaded else PutOutcome.PRESENT
        return OciPush(plan.reference, outcome, disk.size, time.monotonic() - start, rolling if moved else None)

    def _rolling_may_move(self, repo: str, rolling: str, plan: OciImagePlan) -> bool:
        """Not backwards: a rerun of an older version's publish leaves the rolling tag on the newer one."""
        current = self.client.get_manifest(repo, rolling)
        if current is None:
            return True
        theirs = parse_json_object(current[0], f"{repo}:{rolling}").get("annotations") or {}
        ours = json.loads(plan.image)["annotations"]["org.opencontainers.image.version"]
        newer = theirs.get("org.opencontainers.image.version") if isinstance(theirs, dict) else None
        if isinstance(newer, str) and version_sort_key(newer) > version_sort_key(ours):
            log.info("%s:%s stays on %s, newer than %s", repo, rolling, newer, ours)
            return False
        return True

    def _put_proved(self, repo: str, reference: str, data: bytes, media_type: str) -> requests.Response:
        """PUT a manifest, then read it back (by digest, or by tag) and compare the bytes."""
        reply = self.client.put_manifest(repo, reference, data, media_type)
        found = self.client.get_manifest(repo, reference)
        if found is None or found[0] != data:
            raise UploadError(f"{self.url}: {repo}:{reference} read back is not the manifest that was put")
        return reply


def _digests(data: bytes) -> Digests:
    return Digests(len(data), hashlib.sha256(data).hexdigest(), hashlib.sha512(data).hexdigest())
