"""Property-based fuzzing of every request body the API reads (issue 14, section 7).

Each case takes a valid body of one endpoint and puts hostile JSON in one place: any field replaced,
an extra field added, or the whole body replaced. The values mix lone surrogates, control characters,
integers far beyond 64 bits, floats, deep nesting and long strings. No case may give a 5xx, every
refusal must be a JSON error body, and each request is bounded in time and memory
(``tests.fuzzing.bounded``). The profile (seed, number of cases) is the shared one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.catalogue import services
from pipeline.catalogue.contract import VersionPayload
from pipeline.catalogue.http_client import payload_json
from tests.catalogue.conftest import PASSING_AUDIT, Api
from tests.fuzzing import bounded

V = "/api/v1/appliances/debian-12/versions"

# every code point, lone surrogates and C0/C1 controls included
HOSTILE_TEXT = st.text(st.characters(codec=None, categories=None), max_size=40) | st.sampled_from(
    ["\ud800", "\udfff", "a\x00b", "\x1b[31m", "line\nbreak", "\u2028", "x" * 5000, "../../etc/passwd", "%00"]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.sampled_from([2**63, 2**64 + 1, -(2**63) - 1, 10**40])
    | st.floats(allow_nan=False, allow_infinity=False)
    | HOSTILE_TEXT
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(HOSTILE_TEXT, inner, max_size=4),
    max_leaves=30,
)


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


HOSTILE = JSON | st.integers(min_value=30, max_value=120).map(_nested)


def _valid_bodies(version_payload: Callable[..., VersionPayload]) -> dict[tuple[str, str], Any]:
    register = payload_json(version_payload(version="2.0"))
    return {
        ("PUT", "/api/v1/appliances/debian-12"): {"title": "T", "description": "D", "vos": ["vo.example.org"]},
        ("POST", V): register,
        ("PUT", f"{V}/1.0/audit"): PASSING_AUDIT,
        ("POST", f"{V}/1.0/endorsements"): {"vo": "vo.example.org"},
        ("POST", "/api/v1/vos"): {"name": "vo.fuzz", "description": "d"},
        ("POST", "/api/v1/users"): {"name": "fuzz", "email": "f@example.org", "role": "user"},
        ("POST", "/api/v1/users/admin/tokens"): {"label": "fuzz", "days": 3},
    }


def _paths(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document (dict keys and list indexes), the root included."""
    found = [at]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*at, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:3]):
            found += _paths(v, (*at, i))
    return found


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = json.loads(json.dumps(value))
    target = copy
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = new
    return copy


def _mutations(body: Any) -> st.SearchStrategy[Any]:
    replaced = st.tuples(st.sampled_from(_paths(body)), HOSTILE).map(lambda pv: _replace(body, pv[0], pv[1]))
    extra = st.tuples(HOSTILE_TEXT, HOSTILE).map(lambda kv: {**body, kv[0]: kv[1]} if isinstance(body, dict) else body)
    return replaced | extra | HOSTILE


ENDPOINTS = [
    ("PUT", "/api/v1/appliances/debian-12"),
    ("POST", V),
    ("PUT", f"{V}/1.0/audit"),
    ("POST", f"{V}/1.0/endorsements"),
    ("POST", "/api/v1/vos"),
    ("POST", "/api/v1/users"),
    ("POST", "/api/v1/users/admin/tokens"),
]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_no_body_gives_a_server_error(
    signing_api: Api, version_payload: Callable[..., VersionPayload], method: str, path: str
) -> None:
    api = signing_api
    services.register_version(api.uow, "alice", version_payload(version="1.0"), api.settings)
    valid = _valid_bodies(version_payload)[(method, path)]
    headers = {**api.headers("admin"), "content-type": "application/json"}

    @settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(body=_mutations(valid))
    def case(body: Any) -> None:
        raw = json.dumps(body).encode()  # ASCII: surrogates travel as \ud800 escapes, as a client may send
        with bounded(seconds=5, memory_bytes=64 * 2**20):
            r = api.client.request(method, path, content=raw, headers=headers)
        assert r.status_code < 500, f"{method} {path} {raw[:300]!r}: {r.status_code} {r.text[:300]}"
        if r.status_code >= 400:
            detail = r.json()["detail"]
            assert detail and (isinstance(detail, str) or all(d["msg"] for d in detail)), r.text

    case()
