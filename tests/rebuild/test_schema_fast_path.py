"""The fast schema path (jsonschema-rs) must agree with jsonschema on what is valid: the rebuild decision
loads every appliance's newest manifest (and the build its base's), each listing ~1000 packages."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import pytest

from pipeline.schema import load_schema, validation_errors

from .conftest import manifest

GOOD = manifest(
    "debian-12",
    "2026.11.22",
    packages=(("openssl", "3.0.22-1~deb12u2"), ("libc6", "2.36-9+deb12u14")),
    sources=("deb http://deb.debian.org/debian bookworm main",),
).to_dict()


def _broken(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node: Any = doc
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return doc


CASES = [
    ("format_version", 2),
    ("inputs_digest", "ABC"),
    ("created", "2026-11-22 10:00"),
    ("packages.0.version", ""),
    ("packages.1.extra", "x"),
    ("base.kind", "iso"),
    ("base.sources", "deb x"),
    ("artifacts", {}),
    ("accel", ...),
    ("git_commit", "abc"),
    ("timings", {"total": -1}),
]


@pytest.mark.parametrize(("path", "value"), CASES, ids=[c[0] for c in CASES])
def test_invalid_documents_are_reported_with_their_path(path: str, value: Any) -> None:
    doc = _broken(path, value)
    full = list(jsonschema.Draft202012Validator(load_schema("build-manifest")).iter_errors(doc))
    assert full, "the case must break the schema"
    problems = validation_errors("build-manifest", doc, "m.json")
    assert len(problems) == len(full) and all(p.startswith("m.json: ") for p in problems)
    assert path.split(".")[0] in problems[0]


def test_valid_document_passes() -> None:
    assert validation_errors("build-manifest", GOOD, "m.json") == []
    assert not list(jsonschema.Draft202012Validator(load_schema("build-manifest")).iter_errors(GOOD))
