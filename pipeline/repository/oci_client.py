"""The OCI distribution API over plain ``requests``: auth challenges (Basic, Bearer token), TLS,
bounded replies, streamed blob uploads that resume, manifests read back by digest.

TLS is always verified and ``verify`` is passed on every request: requests would otherwise let
``REQUESTS_CA_BUNDLE`` replace a Session's ``verify``, and a private CA (``VMI_OCI_CA``) would never
be used. ``trust_env`` is off so that ``~/.netrc`` never replaces our Authorization header; proxies
from the environment are passed explicitly.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode, urljoin

import requests
from requests.utils import get_environ_proxies

from pipeline.errors import ConfigError, UploadError
from pipeline.formats.oci import INDEX_TYPE, MANIFEST_TYPE, parse_json_object, sha256_digest
from pipeline.fsutil import Digests
from pipeline.log import log
from pipeline.repository import compare

ACCEPT = ", ".join([MANIFEST_TYPE, INDEX_TYPE, "application/vnd.docker.distribution.manifest.v2+json"])
MAX_MANIFEST = 4 * 1024 * 1024  # the distribution spec's limit; anything bigger is refused unread
MAX_SMALL_REPLY = 1024 * 1024  # tokens, error bodies
TIMEOUT = (15.0, 300.0)  # connect, read
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


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

    host: str  # host[:port]
    scheme: str  # https, or http for a loopback test registry
    credentials: tuple[str, str] | None
    verify: str | bool
    attempts: int = 4
    backoff: float = 0.5
    session: requests.Session = field(default_factory=requests.Session)
    _auth: dict[str, str] = field(default_factory=dict)  # scope -> Authorization header value

    def __post_init__(self) -> None:
        self.session.trust_env = False  # no ~/.netrc Authorization over ours; proxies are passed explicitly
        self.base = f"{self.scheme}://{self.host}"

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
                    f"{self.host}: TLS verification failed: {e}",
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
                    f"{self.host}: {method} {path.split('?')[0]}: HTTP {reply.status_code}: "
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
        return RegistryError(f"{self.host}: {message}", status)

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
        bytes it kept, re-hashes that prefix locally and streams the rest (or starts a new session
        when the registry dropped the old one). The registry makes a blob
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
        """How many bytes the registry kept of an upload session and where it goes on; (0, a new session)
        when the session is gone (CNCF distribution drops it when a PATCH breaks off) or the answer is
        ambiguous ("0-0" is both 0 and 1 byte)."""
        status = self.request("GET", location, repo)
        kept = status.headers.get("Range", "")
        if status.status_code == 204 and re.match(r"^0-[0-9]+$", kept) and int(kept.split("-")[1]) > 0:
            return int(kept.split("-")[1]) + 1, urljoin(self.base + "/", status.headers.get("Location", location))
        if status.status_code == 204:
            self.request("DELETE", location, repo, retry=False)
        elif status.status_code != 404:
            self.check(status, "ask how much of an upload arrived", (204, 404))
        log.info("%s: the upload session is gone or empty; starting the blob again", self.host)
        return 0, self.start_upload(repo)

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

    def list_tags(self, repo: str) -> list[str]:
        """Every tag of ``repo`` (``/v2/<name>/tags/list``, following ``Link: <...>; rel="next"``)."""
        tags: list[str] = []
        path: str | None = f"/v2/{repo}/tags/list?n=1000"
        while path:
            reply = self.request("GET", path, repo, stream=True)
            if reply.status_code == 404:
                reply.close()
                return tags
            self.check(reply, f"GET tags of {repo}", (200,))
            link = reply.headers.get("Link", "")
            doc = parse_json_object(read_bounded(reply, MAX_MANIFEST, f"tags of {repo}"), f"tags of {repo}")
            found = doc.get("tags")
            tags += [t for t in found if isinstance(t, str)] if isinstance(found, list) else []
            path = link[1 : link.index(">")] if link.startswith("<") and 'rel="next"' in link else None
        return tags

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
