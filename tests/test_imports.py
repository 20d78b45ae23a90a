"""The import rules that keep the layout readable (beside ruff's rules in tests/test_quality.py).

- ``pipeline.formats`` holds pure readers and writers: it imports no stage, repository, catalogue,
  settings or file-system helper; only other formats, ``pipeline.errors`` and the data model they
  read and write (``pipeline.appliance``: definitions, ``pipeline.manifest``: the build manifest),
  which themselves import no stage;
- stages reach the catalogue only through its client (``pipeline.catalogue.client``: ``open_catalogue``,
  and ``contract``: the protocol, whose payload and result types are the API schemas); the service's
  own modules never import that client;
- ``contract`` and ``schemas`` (the catalogue's one vocabulary) import no service code: no ORM, no use
  cases, no web framework; a fresh interpreter importing ``contract`` proves it;
- no import cycle between the packages of ``pipeline`` (lazy imports inside functions count too).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL = ("pipeline.appliance", "pipeline.manifest")
FORMATS_MAY_IMPORT = ("pipeline.formats", "pipeline.errors", *MODEL)
MODEL_MAY_IMPORT = ("pipeline.errors", "pipeline.schema", "pipeline.fsutil", "pipeline.log")
CLIENT_MODULES = ("pipeline.catalogue.client",)
PROTOCOL = (*CLIENT_MODULES, "pipeline.catalogue.contract")  # the client, the protocol and its plain types
CLIENT_SIDE = ("pipeline.catalogue.client", "pipeline.catalogue.http_client", "pipeline.catalogue.inprocess")
# the vocabulary stages and the service share, and what it may import
VOCABULARY = {
    "pipeline.catalogue.contract": ("pipeline.catalogue.schemas", "pipeline.errors"),
    "pipeline.catalogue.schemas": ("pipeline.catalogue.settings",),
}
SERVICE_LIBRARIES = ("sqlalchemy", "alembic", "fastapi", "starlette", "cryptography", "requests")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def pipeline_imports(path: Path) -> Iterator[str]:
    """Every ``pipeline...`` module a file imports, at any depth (lazy imports included)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "pipeline")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == "pipeline":
                yield node.module
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; write the absolute module name")


IMPORTS = {module_name(p): sorted(set(pipeline_imports(p))) for p in sorted((ROOT / "pipeline").rglob("*.py"))}


def package(module: str) -> str:
    """The unit a cycle is judged on: ``pipeline.catalogue.api.deps`` -> ``pipeline.catalogue``."""
    return ".".join(module.split(".")[:2])


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_rules_see_the_code() -> None:
    """A rule checking nothing passes for nothing: the walk must find the packages and their imports."""
    assert {"pipeline.formats.imagelist", "pipeline.catalogue.client", "pipeline.builder"} <= IMPORTS.keys()
    assert "pipeline.catalogue.client" in {i for deps in IMPORTS.values() for i in deps}


@pytest.mark.parametrize("module", [m for m in IMPORTS if within(m, ("pipeline.formats",))])
def test_formats_are_pure(module: str) -> None:
    bad = [i for i in IMPORTS[module] if not within(i, FORMATS_MAY_IMPORT)]
    assert not bad, f"{module} imports {bad}: formats take streams and values, never stages or settings"


@pytest.mark.parametrize("module", MODEL)
def test_the_model_imports_no_stage(module: str) -> None:
    bad = [i for i in IMPORTS[module] if not within(i, MODEL_MAY_IMPORT)]
    assert not bad, f"{module} imports {bad}: the data model formats use must not pull stages in"


def test_stages_use_only_the_catalogue_client() -> None:
    bad = {
        m: [i for i in deps if within(i, ("pipeline.catalogue",)) and not within(i, PROTOCOL)]
        for m, deps in IMPORTS.items()
        if not within(m, ("pipeline.catalogue",))
    }
    assert not {m: b for m, b in bad.items() if b}


def test_the_service_does_not_import_its_client() -> None:
    bad = {
        m: [i for i in deps if within(i, CLIENT_MODULES)]
        for m, deps in IMPORTS.items()
        if within(m, ("pipeline.catalogue",)) and not within(m, CLIENT_SIDE)
    }
    assert not {m: b for m, b in bad.items() if b}


@pytest.mark.parametrize("module", VOCABULARY)
def test_the_vocabulary_imports_no_service_code(module: str) -> None:
    bad = [i for i in IMPORTS[module] if not within(i, VOCABULARY[module])]
    assert not bad, f"{module} imports {bad}: the contract must load without the service"


def test_importing_the_contract_loads_no_service_code() -> None:
    """At run time too: nothing the listed modules import pulls in the ORM, the web stack or the service."""
    code = (
        "import sys, pipeline.catalogue.contract\n"
        "print(' '.join(m for m in sys.modules if m.startswith('pipeline.') or m.split('.')[0] in sys.argv[1:]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *SERVICE_LIBRARIES], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split()
    assert "pipeline.catalogue.schemas" in out  # the walk sees what was loaded
    allowed = {
        *VOCABULARY,
        *(i for deps in VOCABULARY.values() for i in deps),
        "pipeline.catalogue",
        "pipeline.settings",
    }
    assert sorted(set(out) - allowed) == []


def test_no_import_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    for m, deps in IMPORTS.items():
        graph.setdefault(package(m), set()).update(package(d) for d in deps if package(d) != package(m))

    cycles = sorted(f"{a} -> {b}" for a in graph for b in graph[a] if a in _reach(graph, b))
    assert not cycles, f"packages import each other: {cycles}"


def test_a_cycle_would_be_found() -> None:
    """The cycle rule on a made-up graph: a -> b -> a is reported, a -> b alone is not."""
    graph = {"a": {"b"}, "b": {"a"}}
    assert "a" in _reach(graph, "b")
    assert "a" not in _reach({"a": {"b"}, "b": set()}, "b")


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen
