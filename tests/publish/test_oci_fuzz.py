"""Fuzzing the OCI readers of outside input: what a registry returns as a manifest or referrers index,
and the auth file a person's tools wrote. Each either parses or fails with one clear error, within
bounds; nothing else escapes."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import ArtifactError, ConfigError
from pipeline.formats.oci import parse_json_object, referrers_index
from pipeline.repository.oci_client import load_credentials
from tests.fuzzing import bounded

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)
REFERRER = json.dumps({"artifactType": "application/vnd.cyclonedx+json", "annotations": {"a": "b"}}).encode()


@given(st.one_of(st.binary(max_size=2000), JSON.map(lambda v: json.dumps(v).encode())))
def test_a_registry_index_or_manifest_parses_or_is_refused_clearly(data: bytes) -> None:
    with bounded(seconds=2, memory_bytes=16 * 2**20):
        try:
            doc = referrers_index(data, REFERRER, "p/a:sha256-x")
        except ArtifactError as e:
            assert str(e).startswith("p/a:sha256-x: ")
            return
        entries = json.loads(doc)["manifests"]
        assert sum(1 for m in entries if m["artifactType"] == "application/vnd.cyclonedx+json") >= 1


@given(st.one_of(st.binary(max_size=2000), JSON.map(lambda v: json.dumps(v).encode())))
def test_manifest_layers_are_a_list_of_descriptors_or_refused(data: bytes) -> None:
    with bounded(seconds=2, memory_bytes=16 * 2**20):
        try:
            doc = parse_json_object(data, "x", "layers")
        except ArtifactError as e:
            assert str(e).startswith("x: ")
            return
        assert all(isinstance(layer["digest"], str) for layer in doc.get("layers", []))


@given(
    st.one_of(
        st.binary(max_size=2000),
        JSON.map(lambda v: json.dumps({"auths": {"h:5000": v}}).encode()),
        JSON.map(lambda v: json.dumps({"auths": v}).encode()),
    )
)
def test_an_auth_file_gives_credentials_none_or_one_clear_line(tmp_path_factory: object, data: bytes) -> None:
    path = Path(str(tmp_path_factory.getbasetemp())) / "auth.json"  # type: ignore[attr-defined]
    path.write_bytes(data)
    with bounded(seconds=2, memory_bytes=16 * 2**20):
        try:
            found = load_credentials("h:5000", {"REGISTRY_AUTH_FILE": str(path), "HOME": "/nonexistent"})
        except ConfigError as e:
            assert str(e).startswith(f"{path}: ") and "\n" not in str(e)
            return
    assert found is None or (isinstance(found[0], str) and isinstance(found[1], str))
