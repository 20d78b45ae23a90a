"""Bounded HTTP reads of outside input (package indexes, downloads): a body is read in chunks and
refused past a cap, and the whole exchange has a deadline, not only a per-read timeout."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import requests

CHUNK = 1 << 20


class TooLarge(requests.RequestException):
    """The body (or its declared Content-Length) is over the caller's cap."""


@dataclass(frozen=True)
class Response:
    status_code: int
    headers: Mapping[str, str]
    content: bytes


def get_capped(
    session: requests.Session,
    url: str,
    *,
    limit: int,
    timeout: float,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """GET ``url`` with at most ``limit`` body bytes within ``timeout`` seconds in all."""
    deadline = time.monotonic() + timeout
    with session.get(url, headers=dict(headers or {}), timeout=timeout, stream=True) as response:
        declared = response.headers.get("Content-Length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > limit:
            raise TooLarge(f"{url}: {declared} bytes declared, over the cap of {limit}")
        body = bytearray()
        for chunk in response.iter_content(CHUNK):
            body += chunk
            if len(body) > limit:
                raise TooLarge(f"{url}: over the cap of {limit} bytes")
            if time.monotonic() > deadline:
                raise requests.Timeout(f"{url}: not read within {timeout:.0f}s")
        return Response(response.status_code, dict(response.headers), bytes(body))
