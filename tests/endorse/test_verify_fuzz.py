"""Property-based fuzzing of what a site reads from strangers: the S/MIME envelope, the signed JSON
payload (arbitrary JSON, mutated valid lists, mutated bytes) and the whole ``verify_image_list``.

Every case either passes or is refused with the verifier's own problems (one line each); nothing
else may escape, and each case stays inside ``bounded()`` (time and memory).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import tempfile
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.catalogue.signing import sign_image_list
from pipeline.endorse.pki import DevCa, Issued
from pipeline.errors import VerificationError
from pipeline.formats.imagelist import Endorser
from pipeline.site.verify import (
    _binding_problems,
    _history_problems,
    _load_state,
    read_list_payload,
    split_smime,
    state_key,
    verify_image_list,
)
from tests.endorse.lists import make_entry, make_list
from tests.fuzzing import bounded

NOW = dt.datetime.now(dt.UTC)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=30,
)


def one_line_each(problems: list[str]) -> None:
    assert all(isinstance(p, str) and p for p in problems)
    for p in problems:
        assert not any(unicodedata.category(ch) in ("Cc", "Cs") for ch in p), p


def good_document() -> dict[str, Any]:
    endorser = Endorser("/DC=org/CN=e", "/DC=org/CN=ca", "e@example.org", "e")
    entries = [make_entry(b"a", "https://m.example.org/a.ova"), make_entry(b"b", "https://m.example.org/b", "b-1")]
    return make_list(endorser, entries, version="20261122.1")


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for n, item in enumerate(value):
            found += paths(item, (*prefix, n))
    return found


GOOD = good_document()
GOOD_PATHS = [p for p in paths(GOOD) if p]


def check_payload(payload: bytes) -> None:
    """The payload half of verify_image_list: parse, fields, dates, images, binding, history."""
    with bounded(seconds=2.0, memory_bytes=64 * 2**20):
        body, entries, problems = read_list_payload(payload, NOW)
        one_line_each(problems)
        if body is None:
            assert problems and entries == []
            return
        seen = _load_state(None)
        seen["lists"][state_key(body["dc:identifier"], body["hv:uri"])] = {
            "hv:version": "20261122.1",
            "dc:date:created": "2026-11-22T00:00:00Z",
        }
        one_line_each(_binding_problems(body, "https://x.example.org/vo/v/image.list", "v"))
        one_line_each(_history_problems(body, "https://x.example.org/l", seen, "an-id"))


@given(json_values, st.booleans())
def test_arbitrary_json_payloads(value: Any, wrapped: bool) -> None:
    document = {"hv:imagelist": value} if wrapped else value
    check_payload(json.dumps(document).encode())


@given(st.sampled_from(GOOD_PATHS), json_values, st.sampled_from(["replace", "delete", "add"]))
def test_mutated_valid_lists(path: tuple[Any, ...], value: Any, how: str) -> None:
    document = copy.deepcopy(GOOD)
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if how == "replace":
        parent[last] = value
    elif how == "delete":
        del parent[last]
    elif isinstance(parent, dict):
        parent[f"{last}:extra"] = value
    else:
        parent.append(value)
    check_payload(json.dumps(document).encode())


GOOD_BYTES = (json.dumps(GOOD, sort_keys=True, indent=2) + "\n").encode()


@given(st.lists(st.tuples(st.integers(0, len(GOOD_BYTES)), st.binary(max_size=8), st.integers(0, 8)), max_size=6))
def test_byte_mutations_of_a_valid_payload(edits: list[tuple[int, bytes, int]]) -> None:
    data = bytearray(GOOD_BYTES)
    for at, insert, cut in edits:
        data[at : at + cut] = insert
    check_payload(bytes(data))


def test_the_good_payload_passes() -> None:
    """The fuzzers start from a list the checks accept (or they would only test refusals)."""
    body, entries, problems = read_list_payload(GOOD_BYTES, NOW)
    assert problems == [] and body is not None and len(entries) == 2


@pytest.fixture(scope="module")
def signed(endorser_pair: Issued) -> bytes:
    doc = make_list(Endorser.from_certificate(endorser_pair.certificate), [make_entry(b"a", "https://m.example.org/a")])
    return sign_image_list(doc, endorser_pair.key_pem, endorser_pair.cert_pem)


@given(data=st.data())
def test_smime_splitting(signed: bytes, data: st.DataObject) -> None:
    raw = data.draw(
        st.binary(max_size=2000)
        | st.lists(st.tuples(st.integers(0, len(signed)), st.binary(max_size=16), st.integers(0, 64)), max_size=4).map(
            lambda edits: _apply(signed, edits)
        )
        | st.sampled_from([b"Content-Type: multipart/signed; boundary=", b"MIME-Version: 1.0\r\n\r\n--"]).map(
            lambda head: head + signed
        )
    )
    with bounded(seconds=2.0, memory_bytes=32 * 2**20):
        der, problems = split_smime(raw)
    one_line_each(problems)
    assert der is not None or problems


def _apply(raw: bytes, edits: list[tuple[int, bytes, int]]) -> bytes:
    data = bytearray(raw)
    for at, insert, cut in edits:
        data[at : at + cut] = insert
    return bytes(data)


@settings(max_examples=max(20, settings.default.max_examples // 4))  # each case runs OpenSSL
@given(
    edits=st.lists(st.tuples(st.integers(0, 4000), st.binary(min_size=1, max_size=8), st.integers(0, 8)), max_size=3)
)
def test_whole_verifier_on_mutated_signed_lists(
    signed: bytes, dev_ca: DevCa, edits: list[tuple[int, bytes, int]]
) -> None:
    """End to end (OpenSSL included): a damaged signed list is refused, never crashes the verifier."""
    with tempfile.TemporaryDirectory() as folder:
        listed = Path(folder) / "image.list"
        listed.write_bytes(_apply(signed, edits))
        with bounded(seconds=10.0, memory_bytes=64 * 2**20):
            try:
                verify_image_list(listed, dev_ca.ca_cert)
            except VerificationError as e:
                one_line_each(e.problems)
