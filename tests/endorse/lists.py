"""Helpers that make image list entries and documents for the endorse tests."""

from __future__ import annotations

import datetime as dt
import hashlib

from pipeline.formats.imagelist import Endorser, ImageListEntry, build_image_list

LIST_URI = "http://127.0.0.1:8080/vo/vo.example.org/image.list"


def make_entry(payload: bytes, uri: str, identifier: str = "c0482bc2-bf41-5d49-aaaa-a750174a186b") -> ImageListEntry:
    return ImageListEntry(
        identifier=identifier,
        title="Debian 12 (bookworm) baseline",
        description="Minimal Debian 12",
        uri=uri,
        size=len(payload),
        sha512=hashlib.sha512(payload).hexdigest(),
        version="2026.11.22",
        osname="Debian",
        osversion="12",
        ram_minimum=512,
        core_minimum=1,
        ram_recommended=2048,
        core_recommended=2,
        mpuri="http://127.0.0.1:8080/appliances/debian-12/2026.11.22",
        base_mpuri="http://127.0.0.1:8080/appliances/debian-12",
        appid="debian-12",
        user_fullname="vmi-pipeline maintainers",
        user_guid="0c7a3bd1-1d5c-5b1b-9a53-6b6d7f3b2a11",
        user_uri="mailto:maintainers@example.org",
    )


def make_list(
    endorser: Endorser,
    entries: list[ImageListEntry],
    version: str | int = 1,
    created: dt.datetime | None = None,
    expires: dt.datetime | None = None,
    *,
    uri: str = LIST_URI,
    vo: str = "vo.example.org",
) -> dict[str, object]:
    now = dt.datetime.now(dt.UTC)
    created = created or now - dt.timedelta(minutes=1)
    return build_image_list(
        vo,
        entries,
        endorser,
        version,
        created,
        expires or created + dt.timedelta(weeks=4),
        uri,
        "http://127.0.0.1:8080/",
    )
