"""An ``ImagePayload`` describing real bytes (digests and size from the bytes), shared by the catalogue
and endorsement tests that register files they wrote."""

from __future__ import annotations

import hashlib

from pipeline.catalogue.contract import ImagePayload


def image_payload(uri: str, data: bytes, fmt: str = "qcow2", **fields: object) -> ImagePayload:
    """A Debian 12 x86_64 image at ``uri`` whose content is ``data``; ``fields`` add or override."""
    described: dict[str, object] = dict(
        uri=uri,
        format=fmt,
        size=len(data),
        sha512=hashlib.sha512(data).hexdigest(),
        sha256=hashlib.sha256(data).hexdigest(),
        arch="x86_64",
        os_family="linux",
        os_name="Debian",
        os_version="12",
    )
    described.update(fields)
    return ImagePayload(**described)  # type: ignore[arg-type]
