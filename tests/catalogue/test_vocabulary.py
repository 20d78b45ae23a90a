"""The catalogue speaks one vocabulary: the API schemas (``schemas``) are the contract.

Two typings per entity and no third: the ORM row (``models``) and the pydantic schemas, split by
direction. The in-process adapter and the HTTP client answer with instances of the same classes
(and equal values), and no module of the catalogue types an entity a second time.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import pytest
from pydantic import BaseModel

import pipeline.catalogue
from pipeline.catalogue import contract, schemas
from pipeline.catalogue.contract import AppliancePayload, Catalogue, ImagePayload, VersionPayload
from pipeline.catalogue.http_client import HttpCatalogue
from pipeline.catalogue.inprocess import InProcessCatalogue
from pipeline.catalogue.services import payload_digest
from tests.catalogue.conftest import PASSING_AUDIT, LiveServer, served_image
from tests.catalogue.test_http import VO, _tokens

# (what a stage calls, the class it gets back); the names stages use are the schemas themselves
CALLS: list[tuple[str, Callable[[Catalogue], Any], type[BaseModel]]] = [
    ("get_version", lambda c: c.get_version("debian-12", "1.0"), schemas.VersionPublic),
    ("list_versions", lambda c: c.list_versions("debian-12")[0], schemas.VersionPublic),
    ("list_images", lambda c: c.list_images()[0], schemas.ImagePublic),
    ("build_record", lambda c: c.build_record("debian-12", "1.0"), schemas.BuildRecordPublic),
]


def test_the_contract_names_are_the_schemas() -> None:
    """What a stage sends is what the API accepts, what it gets back is what the API returns."""
    pairs = {
        contract.PackageInfo: schemas.PackageIn,
        contract.AppliancePayload: schemas.ApplianceRecord,
        contract.ImagePayload: schemas.ImageCreate,
        contract.VersionPayload: schemas.VersionRecord,
        contract.ImageInfo: schemas.ImagePublic,
        contract.EndorsementInfo: schemas.EndorsementPublic,
        contract.VersionInfo: schemas.VersionPublic,
        contract.ImageListInfo: schemas.ImageListPublic,
        contract.RevokedEndorsement: schemas.RevokedPublic,
        contract.CascadeInfo: schemas.CascadePublic,
        contract.BuildRecord: schemas.BuildRecordPublic,
    }
    assert all(name is schema for name, schema in pairs.items())


def test_both_catalogues_answer_with_the_same_classes_and_values(live_server: LiveServer) -> None:
    tokens = _tokens(live_server)
    remote = HttpCatalogue(live_server.url, tokens["admin"])
    local = InProcessCatalogue(live_server.settings)
    try:
        remote.ensure_appliance(AppliancePayload(name="debian-12", title="Debian 12", description="baseline", vos=[VO]))
        manifest = {"inputs_digest": "sha256:" + "a" * 64, "base": {"kind": "bootstrap"}}
        images = [served_image(live_server, "debian-12", "1.0", fmt, manifest) for fmt in ("ova", "qcow2")]
        registered = remote.register_version(
            VersionPayload(appliance="debian-12", version="1.0", notes="first", images=images)
        )
        assert type(registered) is schemas.VersionPublic
        assert local.register_version(
            VersionPayload(appliance="debian-12", version="1.0", notes="first", images=images)
        )
        for name, call, cls in CALLS:
            here, there = call(local), call(remote)
            assert type(here) is cls and type(there) is cls, name
            assert here == there, name
        remote.store_audit("debian-12", "1.0", PASSING_AUDIT)
        endorsed = remote.endorse("debian-12", "1.0", VO)
        revoked = local.revoke("debian-12", "1.0", VO)
        assert type(endorsed) is type(revoked) is schemas.ImageListPublic
        # the next list's version: its creation second as YYYYMMDDHHMMSS, but always above the previous one
        # (a revocation a second or more after the endorsement takes the clock's value, not previous + 1)
        stamp = int(revoked.created.strftime("%Y%m%d%H%M%S"))
        assert revoked.hv_version == max(stamp, endorsed.hv_version + 1) > endorsed.hv_version
    finally:
        local.close()
        remote.close()


def test_the_payload_digest_is_the_one_catalogues_already_store() -> None:
    """``versions.payload_digest`` decides whether a repeated publish is "the same": this value was
    computed by the dataclass payloads before the schemas took their place, so existing catalogues
    still see a re-publish as idempotent (a field added to ``VersionRecord`` changes it: think twice)."""
    image = ImagePayload(
        uri="https://r.example.org/a/1/a.ova", format="ova", size=5, sha512="a" * 128, sha256="b" * 64,
        arch="x86_64", os_family="linux", os_name="Debian", os_version="12",
    )  # fmt: skip
    payload = VersionPayload(appliance="a", version="1", notes="n", images=[image])
    assert payload_digest(payload) == "38d1282af3621014fc67c9e001b04f36798e85e660c0c2883904cf292397062a"


# --- no second typing of an entity ----------------------------------------------------------------


def catalogue_classes() -> Iterable[type]:
    """Every class defined in a module of ``pipeline.catalogue`` (migrations excluded)."""
    for info in pkgutil.walk_packages(pipeline.catalogue.__path__, "pipeline.catalogue."):
        if ".migrations" in info.name:
            continue
        module = importlib.import_module(info.name)
        yield from (c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == info.name)


def schema_models() -> list[type[BaseModel]]:
    return [
        c
        for c in vars(schemas).values()
        if isinstance(c, type) and issubclass(c, BaseModel) and c.__module__ == schemas.__name__
    ]


def second_typings(classes: Iterable[type], models: list[type[BaseModel]]) -> list[str]:
    """Classes outside ``schemas`` that type an entity a schema already types: a dataclass (or a
    named tuple) carrying every field of a schema with more than one field, or a pydantic model
    defined elsewhere."""
    found = []
    for cls in classes:
        if issubclass(cls, BaseModel):
            origin = cls.__pydantic_generic_metadata__["origin"] or cls  # Paged[VoPublic] is Paged's
            if origin.__module__ != schemas.__name__:
                found.append(f"{cls.__module__}.{cls.__qualname__}: a pydantic model outside schemas")
            continue
        if dataclasses.is_dataclass(cls):
            fields = {f.name for f in dataclasses.fields(cls)}
        elif issubclass(cls, tuple) and hasattr(cls, "_fields"):
            fields = set(cls._fields)
        else:
            continue
        found += [
            f"{cls.__module__}.{cls.__qualname__} repeats {m.__name__}"
            for m in models
            if len(m.model_fields) > 1 and set(m.model_fields) <= fields
        ]
    return found


def test_no_module_of_the_catalogue_types_an_entity_twice() -> None:
    classes = list(catalogue_classes())
    assert any(c.__name__ == "CatalogueSettings" for c in classes)  # the walk sees the package
    assert second_typings(classes, schema_models()) == []


@dataclasses.dataclass(frozen=True)
class _Lineage:  # what lineage.py held before: LineagePublic's fields and one more
    base_appliance: str
    base_version: str
    outdated: bool
    reason: str | None
    until: datetime | None = None


class _AuditCheck(BaseModel):  # a response model written in a router
    id: str


@pytest.mark.parametrize(
    ("cls", "found"),
    [
        (_Lineage, "repeats LineagePublic"),
        (_AuditCheck, "a pydantic model outside schemas"),
    ],
)
def test_a_second_typing_would_be_found(cls: type, found: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The structural check can fail: a dataclass mirroring a schema, or a model outside schemas."""
    monkeypatch.setattr(cls, "__module__", "pipeline.catalogue.example")
    (reported,) = second_typings([cls], schema_models())
    assert found in reported
