"""Property-based fuzzing of the appliance definition reader (issue 14 §6): arbitrary YAML text and
mutated valid definitions go through the real loader and validator. The only outcomes allowed are an
``Appliance`` or a ``ConfigError`` whose every line names the file; each case is bounded in time and
memory (tests/fuzzing.py). An accepted definition must also make an OVF descriptor that
``verify-ova`` accepts, and its text must survive XML.

CI runs the shared "ci" profile (fixed seed, 200 cases per test); HYPOTHESIS_PROFILE=long searches longer.
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree

from pipeline.appliance import YAML_LIMITS, Appliance, load_appliance
from pipeline.errors import ConfigError
from pipeline.formats.ovf import DiskRef, build_descriptor, parse_descriptor
from pipeline.package.verify import descriptor_facts
from pipeline.schema import parse_yaml, text_problem
from tests.fuzzing import bounded

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_TEXT = (ROOT / "packer_templates" / "debian-12" / "appliance.yaml").read_text()
REFERENCE = yaml.safe_load(REFERENCE_TEXT)
SECONDS, MEMORY = 3.0, 32 * 2**20


@pytest.fixture(scope="module")
def appliance_dir() -> Iterator[Path]:
    """One project reused by every case (only ``appliance.yaml`` changes between cases)."""
    with tempfile.TemporaryDirectory(prefix="fuzz-appliance-") as tmp:
        root = Path(tmp)
        shared = root / "provisioners"
        shared.mkdir()
        for script in ("upgrade.sh", "cloud-init.sh", "seal.sh"):
            (shared / script).write_text("#!/bin/sh\n")
        d = root / "templates" / "debian-12"
        d.mkdir(parents=True)
        (d / "debian-12.pkr.hcl").write_text("# template\n")
        yield d


def load(directory: Path, text: str | bytes) -> Appliance | None:
    """Load ``text`` as the definition, bounded; the only exception allowed is a well-formed ConfigError."""
    path = directory / "appliance.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    try:
        with bounded(SECONDS, MEMORY):
            return load_appliance(directory, directory.parent.parent / "provisioners")
    except ConfigError as e:
        assert e.problems
        for line in e.problems:
            assert "\n" not in line and "\r" not in line, line
            assert line.startswith(str(path)), line
            assert len(line) < 2000, line
        return None


def assert_packageable(a: Appliance) -> None:
    """An accepted definition makes a descriptor that verify-ova's checks accept, text intact."""
    data = build_descriptor(a, "2026.11.22", DiskRef("x-2026.11.22-disk1.vmdk", 512, 2**30))
    tree = parse_descriptor(data)
    assert descriptor_facts(tree).problems == []
    assert tree.findtext(".//{*}Annotation") == a.description
    assert tree.findtext(".//{*}VirtualSystem/{*}Info") == a.title


# --- arbitrary text -----------------------------------------------------------------------------------

YAML_PIECES = [
    "name: ",
    "title: ",
    "description: ",
    "variables:",
    "provisioners:",
    "hardware:",
    "base:",
    "os:",
    "a",
    "debian-12",
    "x.sh",
    "../x.sh",
    "/etc/x.sh",
    "cpus",
    "memory",
    "1",
    "-1",
    "0x1F",
    "1_000",
    "1:30",
    "1.5",
    ".nan",
    ".inf",
    "1e400",
    "9" * 40,
    "yes",
    "no",
    "~",
    "null",
    "2024-01-01",
    "2024-01-01 10:00:00",
    "&a ",
    "*a",
    "&b ",
    "*b",
    "!!binary ",
    "!!python/object/apply:os.system ",
    "!!set ",
    "!!omap ",
    "!!str ",
    "!!int ",
    "!!float ",
    "!!timestamp ",
    "!local ",
    "!",
    "<<: ",
    "? ",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    "[",
    "]",
    "{",
    "}",
    ", ",
    ": ",
    "- ",
    "\n",
    "  ",
    "    ",
    "#",
    "'",
    '"',
    "|",
    ">",
    "\\x07",
    "\\ud800",
    "\\uFFFE",
    "\\U0001FFFF",
    "\\N",
    "\\L",
    "\\0",
    "\t",
    "\r",
    "\x85",
    "\u2028",
    "\ufeff",
    "é",
    "日本",
]


@given(st.lists(st.sampled_from(YAML_PIECES), max_size=60).map("".join))
def test_yaml_shaped_text_never_crashes(appliance_dir: Path, text: str) -> None:
    a = load(appliance_dir, text)
    if a is not None:
        assert_packageable(a)


@given(st.text(max_size=400))
def test_arbitrary_text_never_crashes(appliance_dir: Path, text: str) -> None:
    load(appliance_dir, text)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(appliance_dir: Path, data: bytes) -> None:
    load(appliance_dir, data)


@given(st.lists(st.sampled_from(YAML_PIECES), max_size=80).map("".join))
def test_the_reader_returns_json_data_only(text: str) -> None:
    try:
        with bounded(SECONDS, MEMORY):
            data, _ = parse_yaml(text, "f.yaml", YAML_LIMITS)
    except ConfigError as e:
        assert all("\n" not in p and p.startswith("f.yaml:") for p in e.problems)
        return
    json.dumps(data, allow_nan=False)  # raises on anything JSON cannot hold


# --- mutated valid definitions ------------------------------------------------------------------------

JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, (*prefix, i))
    return found


PATHS = [p for p in _paths(REFERENCE) if p] + [
    ("variables",),
    ("variables", "cpus"),
    ("variables", "locale"),
    ("vendor",),
    ("homepage",),
    ("base", "image"),
    ("base", "appliance"),
    ("rebuild", "schedule"),
    ("os", "codename"),
]


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    doc = copy.deepcopy(REFERENCE)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(PATHS))
        node: Any = doc
        for key in path[:-1]:
            in_list = isinstance(node, list) and isinstance(key, int) and key < len(node)
            if in_list or (isinstance(node, dict) and key in node):
                node = node[key]
            else:
                break
        else:
            last = path[-1]
            if draw(st.booleans()) and isinstance(node, dict):
                node.pop(last, None)
            elif isinstance(node, dict) or (isinstance(node, list) and isinstance(last, int) and last < len(node)):
                node[last] = draw(JSONISH)
    return doc


@given(mutated())
def test_mutated_definitions_never_crash(appliance_dir: Path, doc: dict[str, Any]) -> None:
    a = load(appliance_dir, yaml.safe_dump(doc, allow_unicode=True))
    if a is not None:
        assert_packageable(a)


@given(
    st.lists(
        st.tuples(st.integers(0, len(REFERENCE_TEXT)), st.integers(0, 8), st.sampled_from(YAML_PIECES)),
        min_size=1,
        max_size=4,
    )
)
def test_edited_definition_text_never_crashes(appliance_dir: Path, edits: list[tuple[int, int, str]]) -> None:
    text = REFERENCE_TEXT
    for at, cut, piece in edits:
        text = text[:at] + piece + text[at + cut :]
    a = load(appliance_dir, text)
    if a is not None:
        assert_packageable(a)


# --- the text rule and XML agree -----------------------------------------------------------------------


@given(st.text(max_size=80), st.booleans())
def test_text_the_rule_accepts_survives_xml(text: str, multiline: bool) -> None:
    if text_problem(text, multiline) is not None:
        return
    el = etree.Element("Annotation")
    el.text = text  # lxml raises on anything XML 1.0 cannot carry
    again = etree.fromstring(etree.tostring(el, encoding="UTF-8"))
    assert (again.text or "") == text
