"""Links that follow the service: repository files are addressed by key, their URL made when asked.

A file repository served by this catalogue (``repository_public_url`` = ``catalogue_public_url/repo``,
the default) has its images registered under that configured URL, but each is only a key below ``/repo/``:
pages and the API rebuild the URL from the base the request came to (another port, a proxy name), and
signed lists from the configured public base. S3, OCI and other https locations stay as registered.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.catalogue.contract import ImageInfo
from pipeline.catalogue.settings import CatalogueSettings


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


def served_here(settings: CatalogueSettings) -> bool:
    """Whether the configured repository URL is this catalogue's own ``/repo`` (its default).

    Same origin as the catalogue, or a loopback one (a local trial, possibly served on another port now).
    """
    public = settings.repository_public_url
    if settings.repository_root is None or not public or urlsplit(public).path.rstrip("/") != "/repo":
        return False
    return _origin(public) == _origin(settings.public_url) or is_loopback_url(public)


def repository_key(settings: CatalogueSettings, uri: str) -> str | None:
    """The key below ``/repo/`` of an image in the file repository this catalogue serves, else None."""
    root, public = settings.repository_root, (settings.repository_public_url or "").rstrip("/")
    if root is None:
        return None
    if served_here(settings) and uri.startswith(public + "/"):
        return uri[len(public) + 1 :]
    if uri.startswith("file://"):
        local = Path(uri[len("file://") :])
        if local.is_absolute() and local.is_relative_to(root):
            return str(local.relative_to(root))
    return None


def download_url(settings: CatalogueSettings, image: ImageInfo, base: str | None = None) -> str | None:
    """Where a client fetches the image: ``{base}/repo/{key}`` for repository files (``base`` defaults to
    the configured public URL), other http(s) URLs as registered, None for what a browser cannot fetch."""
    key = repository_key(settings, image.uri)
    if key is not None:
        return f"{(base or settings.public_url).rstrip('/')}/repo/{key}"
    if image.uri.startswith(("https://", "http://")):
        return image.uri
    return None


def is_loopback_url(url: str) -> bool:
    """Whether ``url`` names this machine only (localhost, 127.0.0.0/8, ::1): useless to any site."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
