"""An OCI registry as the repository (``oci://HOST[:PORT]/PROJECT``), the way EGI distributes images.

Each version becomes, in repository ``PROJECT/<appliance>``, an OCI 1.1 image manifest whose single
layer is the qcow2 (``application/x-qemu-disk``) carrying the annotations EGI's atrope reads on
``layers[0]``; the config is the OCI empty descriptor. Tags: ``<os_version>-<version>`` (immutable)
and the rolling ``<os_version>``. The CycloneDX SBOM is attached as a referrer (``subject`` = the
image manifest) and listed under the referrers tag-schema fallback ``sha256-<hex>`` when the
registry has no referrers API (CNCF distribution has none).

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

import base64
import hashlib
import ipaddress
import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode, urljoin, urlsplit

import requests
from requests.utils import get_environ_proxies

from pipeline.appliance import Appliance
from pipeline.errors import ConfigError, UploadError
from pipeline.fsutil import Digests
from pipeline.log import log
from pipeline.manifest import Artifact, BuildManifest, version_sort_key
from pipeline.repository import ObjectInfo, PutOutcome, PutResult, UploadJournal, UploadTuning, compare

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_BLOB = b"{}"
EMPTY_DESCRIPTOR = {
    "mediaType": EMPTY_TYPE,
    "digest": "sha256:" + hashlib.sha256(EMPTY_BLOB).hexdigest(),
    "size": 2,
}
DISK_TYPES = {"qcow2": "application/x-qemu-disk"}
IMAGE_ARTIFACT_TYPE = "application/vnd.unknown.artifact.v1"  # what `oras push` writes; atrope ignores it
SBOM_TYPE = "application/vnd.cyclonedx+json"
ACCEPT = ", ".join([MANIFEST_TYPE, INDEX_TYPE, "application/vnd.docker.distribution.manifest.v2+json"])
MAX_MANIFEST = 4 * 1024 * 1024  # the distribution spec's limit; anything bigger is refused unread
MAX_SMALL_REPLY = 1024 * 1024  # tokens, error bodies
TIMEOUT = (15.0, 300.0)  # connect, read

_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_NAME = re.compile(r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$")
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
# what atrope maps from the layer annotations: image description, admin user, glance properties
ADMIN_USERS = {"debian": "debian", "ubuntu": "ubuntu", "almalinux": "almalinux", "rocky": "rocky", "fedora": "fedora"}


def canonical(doc: Mapping[str, Any]) -> bytes:
    """The bytes we put and hash: compact, sorted keys (so the digest is known before the push)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


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


def image_tags(appliance: Appliance, manifest: BuildManifest) -> tuple[str, str]:
    """(long, rolling): ``<os_version>-<version>`` and ``<os_version>`` (atrope syncs tags without '-')."""
    os_version = manifest.os.get("version") or appliance.os.version
    long_tag, rolling = f"{os_version}-{manifest.version}", os_version
    for tag in (long_tag, rolling):
        if not _TAG.match(tag) or "-" in rolling:
            raise ConfigError(
                f"{appliance.definition_path}: os.version: {os_version!r} does not make a valid OCI tag "
                f"({tag!r}); the rolling tag must have no '-'"
            )
    return long_tag, rolling


# -- what: manifests and annotations (pure) ----------------------------------------------------------


def layer_annotations(appliance: Appliance, manifest: BuildManifest, disk: Artifact) -> dict[str, str]:
    """What atrope 2.1.0 reads from ``layers[0]`` (``eu.egi.cloud.tag`` is required, else it ignores the image)."""
    os_name = (manifest.os.get("name") or appliance.os.name).lower().split()[0]
    annotations = {
        "eu.egi.cloud.tag": manifest.version,
        "eu.egi.cloud.description": appliance.title,
        "org.openstack.glance.os_distro": os_name,
        "org.openstack.glance.os_version": manifest.os.get("version") or appliance.os.version,
        "org.openstack.glance.os_type": manifest.os.get("family") or appliance.os.family.value,
        "org.openstack.glance.architecture": manifest.arch,
        "org.openstack.glance.disk_format": disk.format,
        "org.openstack.glance.container_format": "bare",
        "org.opencontainers.image.title": Path(disk.name).name,
    }
    admin = appliance.variables.get("admin_user") or ADMIN_USERS.get(os_name)
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
    objects), else one clear ``RegistryError`` naming ``what``."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise RegistryError(f"{what}: not valid JSON ({e})") from e
    if not isinstance(doc, dict):
        raise RegistryError(f"{what}: not a JSON object")
    if list_field is not None:
        items = doc.get(list_field, [])
        if not isinstance(items, list) or not all(
            isinstance(x, dict) and isinstance(x.get("digest"), str) for x in items
        ):
            raise RegistryError(f"{what}: {list_field}: must be a list of descriptors")
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


# -- how: credentials, TLS, the HTTP client ----------------------------------------------------------


def tls_verify(environ: Mapping[str, str]) -> str | bool:
    """``VMI_OCI_CA`` if set, else the bundle the environment names, else requests' default.

    Passed on every request: requests would otherwise let ``REQUESTS_CA_BUNDLE`` replace a
    Session's ``verify``, and a private CA would never be used.
    """
    ca = environ.get("VMI_OCI_CA")
    if ca:
        if not Path(ca).is_file():
            raise ConfigError(f"environment: VMI_OCI_CA: {ca} is not a file", hint="name a PEM file with the CA")
        return ca
    return environ.get("REQUESTS_CA_BUNDLE") or environ.get("SSL_CERT_FILE") or True


def auth_files(environ: Mapping[str, str]) -> list[Path]:
    """Where podman, skopeo and docker keep logins, in the order podman reads them."""
    home = Path(environ.get("HOME", "~")).expanduser()
    found = []
    if environ.get("REGISTRY_AUTH_FILE"):
        found.append(Path(environ["REGISTRY_AUTH_FILE"]))
    if environ.get("XDG_RUNTIME_DIR"):
        found.append(Path(environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    found.append(Path(environ.get("XDG_CONFIG_HOME") or home / ".config") / "containers" / "auth.json")
    found.append(Path(environ.get("DOCKER_CONFIG") or home / ".docker") / "config.json")
    return found


def load_credentials(host: str, environ: Mapping[str, str]) -> tuple[str, str] | None:
    """``VMI_OCI_USERNAME``/``VMI_OCI_PASSWORD``, else the first auth file with an entry for ``host``."""
    user, password = environ.get("VMI_OCI_USERNAME"), environ.get("VMI_OCI_PASSWORD")
    if user or password:
        if not (user and password):
            raise ConfigError("environment: VMI_OCI_USERNAME and VMI_OCI_PASSWORD go together: set both or neither")
        return user, password
    for path in auth_files(environ):
        if not path.is_file():
            continue
        entry = _auth_entry(path, host)
        if entry is None:
            continue
        try:
            raw = base64.b64decode(entry["auth"], validate=True).decode()
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{path}: auths.{host}.auth: not base64 of user:password ({e})") from e
        user, sep, password = raw.partition(":")
        if not sep:
            raise ConfigError(f"{path}: auths.{host}.auth: not base64 of user:password")
        return user, password
    return None


def _auth_entry(path: Path, host: str) -> dict[str, Any] | None:
    """The ``auths`` entry for ``host`` in a podman/docker auth file (bounded; credential helpers are not run)."""
    if path.stat().st_size > MAX_SMALL_REPLY:
        raise ConfigError(f"{path}: larger than 1 MiB, not an auth file")
    try:
        doc = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from e
    auths = doc.get("auths", {}) if isinstance(doc, dict) else None
    if not isinstance(auths, dict):
        raise ConfigError(f"{path}: auths: must be a mapping of registry to credentials")
    for key, entry in auths.items():
        if key.removeprefix("https://").rstrip("/") == host:
            if not isinstance(entry, dict):
                raise ConfigError(f"{path}: auths.{host}: must be a mapping with an auth field")
            return entry
    helpers = doc.get("credHelpers", {})
    if (isinstance(helpers, dict) and host in helpers) or doc.get("credsStore"):
        log.warning("%s: credential helpers are not used; set VMI_OCI_USERNAME/VMI_OCI_PASSWORD", path)
    return None


class RegistryError(UploadError):
    def __init__(self, message: str, status: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.status = status


@dataclass
class RegistryClient:
    """The distribution API calls we need; authenticates on a 401 challenge (Basic or Bearer token)."""

    location: OciLocation
    credentials: tuple[str, str] | None
    verify: str | bool
    attempts: int = 4
    backoff: float = 0.5
    session: requests.Session = field(default_factory=requests.Session)
    _auth: dict[str, str] = field(default_factory=dict)  # scope -> Authorization header value

    def __post_init__(self) -> None:
        self.session.trust_env = False  # no ~/.netrc Authorization over ours; proxies are passed explicitly
        self.base = f"{self.location.scheme}://{self.location.host}"

    # - plumbing -

    def _send(self, method: str, url: str, scope: str, **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if scope in self._auth:
            headers["Authorization"] = self._auth[scope]
        return self.session.request(
            method,
            url,
            headers=headers,
            verify=self.verify,
            timeout=TIMEOUT,
            proxies=get_environ_proxies(url),
            allow_redirects=kwargs.pop("allow_redirects", True),
            **kwargs,
        )

    def request(
        self, method: str, path: str, scope: str = "", retry: bool = True, replay: bool = True, **kwargs: Any
    ) -> requests.Response:
        """One call; on 401 it answers the challenge and asks again (``replay``: the body can be sent
        again; else the 401 is returned, the caller resumes); 5xx and dropped connections are retried
        with backoff when ``retry``."""
        url = path if path.startswith(("http://", "https://")) else self.base + path
        for attempt in range(1, self.attempts + 1):
            try:
                reply = self._send(method, url, scope, **kwargs)
                if reply.status_code == 401 and self._answer(reply, scope):
                    if not replay:
                        return reply
                    reply = self._send(method, url, scope, **kwargs)
            except requests.exceptions.SSLError as e:
                raise RegistryError(
                    f"{self.location.host}: TLS verification failed: {e}",
                    hint="set VMI_OCI_CA to the PEM file of the registry's CA",
                ) from e
            except (requests.ConnectionError, requests.Timeout) as e:
                if not retry or attempt == self.attempts:
                    raise RegistryError(f"{method} {url}: {e}") from e
                self._wait(attempt, f"{method} {url}: {e}")
                continue
            if reply.status_code >= 500 and retry and attempt < self.attempts:
                self._wait(attempt, f"{method} {url}: HTTP {reply.status_code}")
                continue
            if reply.status_code in (401, 403):
                raise RegistryError(
                    f"{self.location.host}: {method} {path.split('?')[0]}: HTTP {reply.status_code}: "
                    + ("no credentials" if self.credentials is None else "the credentials were refused"),
                    reply.status_code,
                    hint="check VMI_OCI_USERNAME/VMI_OCI_PASSWORD (or `podman login`) and push rights on the project",
                )
            return reply
        raise AssertionError("unreachable")

    def _wait(self, attempt: int, why: str) -> None:
        delay = self.backoff * 2 ** (attempt - 1)
        log.warning("%s; trying again in %.1f s", why, delay)
        time.sleep(delay)

    def _answer(self, reply: requests.Response, scope: str) -> bool:
        """Work out the Authorization for ``scope`` from a WWW-Authenticate challenge; False if we cannot."""
        challenge = reply.headers.get("WWW-Authenticate", "")
        kind, _, params_text = challenge.partition(" ")
        if self.credentials is None and kind.lower() == "basic":
            return False
        if kind.lower() == "basic":
            token = base64.b64encode(":".join(self.credentials or ("", "")).encode()).decode()
            self._auth[scope] = f"Basic {token}"
            return True
        if kind.lower() != "bearer":
            return False
        params = dict(_CHALLENGE_PARAM.findall(params_text))
        realm = params.get("realm")
        if not realm:
            return False
        query = {k: v for k, v in (("service", params.get("service")), ("scope", params.get("scope"))) if v}
        token_url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        got = self.session.get(
            token_url,
            auth=self.credentials,
            verify=self.verify,
            timeout=TIMEOUT,
            proxies=get_environ_proxies(token_url),
            stream=True,
        )
        body = read_bounded(got, MAX_SMALL_REPLY, token_url)
        if got.status_code != 200:
            return False
        bearer: object = None
        try:
            data = json.loads(body)
            bearer = data.get("token") or data.get("access_token")
        except (ValueError, AttributeError):
            pass
        if not isinstance(bearer, str) or not bearer:
            raise RegistryError(f"{realm}: the token service answered without a token")
        self._auth[scope] = f"Bearer {bearer}"
        return True

    def error(self, message: str, status: int | None = None) -> RegistryError:
        return RegistryError(f"{self.location.host}: {message}", status)

    def check(self, reply: requests.Response, what: str, ok: tuple[int, ...]) -> requests.Response:
        if reply.status_code not in ok:
            body = read_bounded(reply, 4096, what, strict=False).decode(errors="replace").strip()
            raise self.error(f"{what}: HTTP {reply.status_code}: {body[:300]}", reply.status_code)
        return reply

    # - API -

    def ping(self) -> None:
        self.check(self.request("GET", "/v2/"), "GET /v2/", (200,))

    def blob_size(self, repo: str, digest: str) -> int | None:
        reply = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", repo)
        if reply.status_code == 404:
            return None
        self.check(reply, f"HEAD blob {digest}", (200,))
        return int(reply.headers.get("Content-Length", "-1"))

    def read_blob(self, repo: str, digest: str, limit: int) -> Iterator[bytes]:
        """The blob's bytes in chunks (at most ``limit`` bytes are accepted)."""
        reply = self.check(
            self.request("GET", f"/v2/{repo}/blobs/{digest}", repo, stream=True), f"GET blob {digest}", (200,)
        )
        seen = 0
        with reply:
            for chunk in reply.iter_content(1024 * 1024):
                seen += len(chunk)
                if seen > limit:
                    raise self.error(f"blob {digest} is larger than the {limit} bytes expected")
                yield chunk

    def blob_digests(self, repo: str, digest: str, limit: int) -> Digests:
        sha256, sha512, size = hashlib.sha256(), hashlib.sha512(), 0
        for chunk in self.read_blob(repo, digest, limit):
            sha256.update(chunk)
            sha512.update(chunk)
            size += len(chunk)
        return Digests(size, sha256.hexdigest(), sha512.hexdigest())

    def start_upload(self, repo: str) -> str:
        reply = self.check(self.request("POST", f"/v2/{repo}/blobs/uploads/", repo), "start a blob upload", (202,))
        return urljoin(self.base + "/", reply.headers["Location"])

    def finish_upload(self, repo: str, location: str, digest: str, body: bytes = b"") -> None:
        sep = "&" if "?" in location else "?"
        reply = self.request(
            "PUT",
            f"{location}{sep}digest={quote(digest)}",
            repo,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(body))},
            data=body,
            retry=False,  # a repeated PUT of a finished session would 404; the caller re-checks by HEAD
        )
        self.check(reply, f"complete the upload of {digest}", (201,))

    def push_bytes(self, repo: str, data: bytes) -> str:
        digest = sha256_digest(data)
        if self.blob_size(repo, digest) != len(data):
            self.finish_upload(repo, self.start_upload(repo), digest, data)
        return digest

    def push_file(self, repo: str, path: Path, expected: Digests, read_size: int = 1024 * 1024) -> bool:
        """Upload ``path`` as a blob unless the registry has it; True if this call uploaded it.

        One PATCH streams the file from disk (``read_size`` at a time, never the whole file in memory)
        and hashes what it reads. After a 5xx or a dropped connection it asks the registry how many
        bytes it kept, re-hashes that prefix locally and streams the rest. The registry makes a blob
        only on the final PUT, which names the sha256 computed while reading: a file that changed
        since packaging is refused here, and a damaged upload by the registry.
        """
        digest = "sha256:" + expected.sha256
        if self.blob_size(repo, digest) == expected.size:
            return False
        location = self.start_upload(repo)
        offset = 0
        with open(path, "rb") as f:
            for attempt in range(1, self.attempts + 1):
                sha256 = _prefix_sha256(f, offset, read_size)
                body = _HashingBody(f, offset, expected.size, sha256, read_size)
                headers = {"Content-Type": "application/octet-stream"}
                if body.remaining:  # the registry refuses (416) a start that is not what it holds
                    headers["Content-Range"] = f"{offset}-{expected.size - 1}"
                try:
                    reply = self.request("PATCH", location, repo, retry=False, replay=False, data=body, headers=headers)
                    if reply.status_code == 202 and body.remaining == 0:
                        location = urljoin(self.base + "/", reply.headers["Location"])
                        break
                    if reply.status_code < 500 and reply.status_code != 401:
                        self.check(reply, "upload a blob", (202,))
                    why = f"HTTP {reply.status_code}"
                except RegistryError as e:
                    if e.status is not None or attempt == self.attempts:
                        raise
                    why = e.message
                if attempt == self.attempts:
                    raise self.error(f"upload of {path.name} failed {attempt} times, last: {why}")
                self._wait(attempt, f"PATCH {path.name}: {why}")
                offset, location = self._upload_status(repo, location)
                if offset <= 1:  # "0-0" means 0 or 1 byte kept: start a clean session instead of guessing
                    self.request("DELETE", location, repo, retry=False)
                    offset, location = 0, self.start_upload(repo)
        read = Digests(expected.size - body.remaining, sha256.hexdigest(), expected.sha512)
        if (read.size, read.sha256) != (expected.size, expected.sha256):
            self.request("DELETE", location, repo, retry=False)  # the registry never makes a blob of it
            raise UploadError(
                f"{path} changed since it was packaged: " + "; ".join(compare(str(path), expected, read)),
                hint="package the version again, then publish",
            )
        self.finish_upload(repo, location, digest)
        return True

    def _upload_status(self, repo: str, location: str) -> tuple[int, str]:
        """How many bytes the registry kept of an upload session, and the session's next location."""
        status = self.request("GET", location, repo)
        if status.status_code != 204:
            raise self.error("the upload session was lost; publish again to start over", status.status_code)
        kept = status.headers.get("Range", "")
        offset = int(kept.split("-")[1]) + 1 if re.match(r"^0-[0-9]+$", kept) else 0
        return offset, urljoin(self.base + "/", status.headers.get("Location", location))

    def get_manifest(self, repo: str, reference: str) -> tuple[bytes, str] | None:
        """(bytes, digest) of a manifest, or None; the digest is recomputed, never taken on trust."""
        reply = self.request("GET", f"/v2/{repo}/manifests/{reference}", repo, headers={"Accept": ACCEPT}, stream=True)
        if reply.status_code == 404:
            reply.close()
            return None
        self.check(reply, f"GET manifest {repo}:{reference}", (200,))
        data = read_bounded(reply, MAX_MANIFEST, f"{repo}:{reference}")
        digest = sha256_digest(data)
        claimed = reply.headers.get("Docker-Content-Digest")
        if claimed and claimed != digest:
            raise self.error(f"{repo}:{reference}: the registry says {claimed}, the bytes hash to {digest}")
        if reference.startswith("sha256:") and reference != digest:
            raise self.error(f"{repo}@{reference}: the bytes hash to {digest}")
        return data, digest

    def put_manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> requests.Response:
        reply = self.request(
            "PUT", f"/v2/{repo}/manifests/{reference}", repo, data=data, headers={"Content-Type": media_type}
        )
        self.check(reply, f"PUT manifest {repo}:{reference}", (201,))
        claimed = reply.headers.get("Docker-Content-Digest")
        if claimed and claimed != sha256_digest(data):
            raise self.error(f"{repo}:{reference} stored as {claimed}, sent {sha256_digest(data)}")
        return reply

    def delete_manifest(self, repo: str, digest: str) -> None:
        reply = self.request("DELETE", f"/v2/{repo}/manifests/{digest}", repo)
        self.check(reply, f"DELETE {repo}@{digest}", (202, 404))


def read_bounded(reply: requests.Response, limit: int, what: str, strict: bool = True) -> bytes:
    """At most ``limit`` bytes of a reply (a larger one is refused, or cut when not ``strict``)."""
    out = bytearray()
    with reply:
        for chunk in reply.iter_content(65536):
            out += chunk
            if len(out) > limit:
                if strict:
                    raise RegistryError(f"{what}: reply larger than {limit} bytes")
                return bytes(out[:limit])
    return bytes(out)


# -- the repository ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OciImagePlan:
    """One disk image as an OCI artifact: what will be pushed, under which tags."""

    repository: str  # project/appliance
    reference: str  # host/project/appliance:long-tag@sha256:... (the catalogue's image URI)
    tags: tuple[str, str]  # long (immutable), rolling
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
        lines += [f"  tag   {host}/{self.repository}:{t}" for t in self.tags]
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
            self.location,
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

    def delete(self, key: str) -> None:
        """Retention: delete a version's image manifest (so its tags) and its referrers (SBOM, fallback
        index). Refused while the rolling tag still points at it: that would unpublish the current image."""
        repo, tag = self._split(key)
        found = self.client.get_manifest(repo, tag)
        if found is None:
            return
        digest = found[1]
        rolling = tag.split("-", 1)[0]
        if rolling != tag:
            current = self.client.get_manifest(repo, rolling)
            if current is not None and current[1] == digest:
                raise UploadError(
                    f"{self.location.host}/{repo}:{tag}: the rolling tag {rolling} still points at it; not deleted",
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

    def plan_image(self, appliance: Appliance, manifest: BuildManifest, sbom: bytes, sbom_name: str) -> OciImagePlan:
        """Every manifest, tag and reference of the push, worked out before anything is sent (--dry-run)."""
        disk = manifest.artifact("qcow2")
        long_tag, rolling = image_tags(appliance, manifest)
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
        if self._rolling_may_move(repo, rolling, plan):  # moved only once the long tag is proved
            self._put_proved(repo, rolling, plan.image, MANIFEST_TYPE)
        outcome = PutOutcome.UPLOADED if uploaded else PutOutcome.PRESENT
        return OciPush(plan.reference, outcome, disk.size, time.monotonic() - start)

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


def _prefix_sha256(f: BinaryIO, end: int, read_size: int) -> Any:
    """sha256 of the first ``end`` bytes of ``f`` (what the registry already holds of a resumed upload)."""
    sha256 = hashlib.sha256()
    f.seek(0)
    left = end
    while left > 0:
        chunk = f.read(min(read_size, left))
        if not chunk:
            break
        sha256.update(chunk)
        left -= len(chunk)
    return sha256


class _HashingBody:
    """A request body streaming ``f`` from ``start`` to ``end`` and hashing what it hands out.

    ``__len__`` gives requests a Content-Length, so the file is sent as it is read, never buffered.
    """

    def __init__(self, f: BinaryIO, start: int, end: int, sha256: Any, read_size: int) -> None:
        f.seek(start)
        self._f = f
        self._sha256 = sha256
        self._read_size = read_size
        self.remaining = end - start

    def __len__(self) -> int:
        return self.remaining

    def __iter__(self) -> Iterator[bytes]:
        """``read_size`` blocks: urllib3 sends each with one ``sendall`` (a ``read()`` body would go in
        http.client's 16 KiB blocks, several times slower through TLS)."""
        while self.remaining > 0:
            data = self._f.read(min(self._read_size, self.remaining))
            if not data:  # the registry would wait for bytes that will never come
                raise UploadError(f"{getattr(self._f, 'name', 'the file')}: shorter than packaged; package it again")
            self._sha256.update(data)
            self.remaining -= len(data)
            yield data
