"""Can a site reach the URLs a publish records? The defaults (``http://127.0.0.1:8080/repo`` and
``http://127.0.0.1:8080``) name this machine: fine for a trial, useless in a signed list.

Only what the URL itself says is judged (``localhost``, loopback, private, link-local, unspecified IP
literals); host names are not resolved, as what they resolve to here says nothing about a site.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from pipeline.settings import Settings


def unreachable(url: str) -> str | None:
    """Why no site can reach ``url`` (``"a loopback address"``), or None when nothing says so."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return "a loopback address"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    for kind, hit in (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("unspecified", ip.is_unspecified),
        ("private", ip.is_private),
    ):
        if hit:
            return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} address"
    return None


def public_url_warning(settings: Settings) -> str | None:
    """One line naming each public URL this publish records that sites cannot reach, and how to set it;
    None when there is none. The repository's URL matters unless images go to an OCI registry (their
    references are recorded instead); the catalogue's when it runs in-process (a catalogue service
    uses its own, and ``invoke serve`` refuses to sign lists for a loopback one)."""
    checked = []
    if not settings.repository.startswith("oci://"):
        checked.append(("repository_public_url", settings.repository_public_url))
    if not settings.catalogue.startswith(("http://", "https://")):
        checked.append(("catalogue_public_url", settings.catalogue_public_url))
    bad = [(name, url, why) for name, url in checked if (why := unreachable(url)) is not None]
    if not bad:
        return None
    names = " and ".join(f"vmi.{name} {url} ({why})" for name, url, why in bad)
    how = " and ".join(f"VMI_{name.upper()}" for name, _, _ in bad)
    return (
        f"sites cannot reach {names}: set {'them' if len(bad) > 1 else 'it'} to the address sites use, in "
        f"invoke.yaml (vmi:) or as {how}, before publishing for sites (fine for a trial on this machine)"
    )
