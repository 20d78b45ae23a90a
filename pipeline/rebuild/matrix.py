"""The CI build matrix: appliances grouped by the baseline they are layered on, in build order.

One CI job per group keeps a layered appliance on the same runner as its base (it is built from the
base's output) and lets unrelated groups build in parallel on separate runners. Each group is also
the unit of CI concurrency control (``vmi-publish-<group>``), so two runs never publish the same
appliance at once. ``changed_since`` narrows the matrix to appliances whose definition, template or
provisioners changed since a git revision, plus everything layered on them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pipeline.appliance import Appliance, build_order, load_all
from pipeline.errors import ConfigError
from pipeline.run import run
from pipeline.settings import Settings

# Changes here alter every build: all appliances are in the matrix.
BUILD_WIDE = (
    "pipeline/builder/",
    "pipeline/appliance.py",
    "pipeline/schemas/appliance.schema.json",
    "scripts/setup",
    "packer_templates/_shared/",  # the template every appliance is built with
)
GITLAB_JOB_TEMPLATE = ".gitlab/vmi-jobs.yml"
GITLAB_JOB = ".vmi-appliances"


def root_of(appliance: Appliance, appliances: Mapping[str, Appliance]) -> str:
    """The baseline at the bottom of an appliance's layering chain (itself if it is not layered)."""
    current = appliance
    while current.base.appliance is not None and current.base.appliance in appliances:
        current = appliances[current.base.appliance]
    return current.name


def dependants(names: Iterable[str], appliances: Mapping[str, Appliance]) -> set[str]:
    """``names`` plus every appliance layered on them, directly or not."""
    found = set(names)
    grew = True
    while grew:
        more = {a.name for a in appliances.values() if a.base.appliance in found} - found
        found |= more
        grew = bool(more)
    return found


def changed_files(root: Path, since: str) -> list[str]:
    """Paths changed between ``since`` and the working tree (committed or not), relative to ``root``."""
    if since.startswith("-"):
        raise ConfigError(f"--changed-only: {since!r} is not a git revision")
    result = run(
        ["git", "diff", "--name-only", "--relative", "--no-renames", since, "--", "."],
        cwd=root,
        hint="give a revision that exists in this clone (CI: fetch enough history, e.g. fetch-depth: 0)",
    )
    untracked = run(["git", "ls-files", "--others", "--exclude-standard"], cwd=root)
    return sorted({*result.stdout.split(), *untracked.stdout.split()})


def affected(settings: Settings, appliances: Mapping[str, Appliance], files: Iterable[str]) -> set[str]:
    """Appliances whose inputs live in ``files`` (definition folder, provisioners), plus dependants."""
    files = list(files)
    if any(f.startswith(BUILD_WIDE) for f in files):
        return set(appliances)
    touched: set[str] = set()
    changed_paths = {(settings.root / f).resolve() for f in files}
    for a in appliances.values():
        folder = a.directory.resolve()
        if any(p == folder or folder in p.parents for p in changed_paths):
            touched.add(a.name)
        elif any(p.resolve() in changed_paths for p in a.provisioner_paths(settings.provisioners_dir)):
            touched.add(a.name)
    return dependants(touched, appliances)


def matrix_groups(appliances: Mapping[str, Appliance], selected: Iterable[str]) -> list[dict[str, str]]:
    """``[{"group": root, "appliances": "a b c"}]``: selected appliances by root, each group in build order."""
    chosen = set(selected)
    groups: dict[str, list[str]] = {}
    for a in build_order(appliances.values()):
        if a.name in chosen:
            groups.setdefault(root_of(a, appliances), []).append(a.name)
    return [{"group": g, "appliances": " ".join(names)} for g, names in sorted(groups.items())]


def gitlab_pipeline(groups: list[dict[str, str]]) -> dict[str, Any]:
    """A GitLab child pipeline: one job per group, extending the job template kept in the repository."""
    doc: dict[str, Any] = {"include": [{"local": GITLAB_JOB_TEMPLATE}]}
    if not groups:
        doc["nothing-to-do"] = {"extends": GITLAB_JOB, "variables": {"APPLIANCES": ""}}
    for g in groups:
        doc[f"appliances:{g['group']}"] = {
            "extends": GITLAB_JOB,
            "resource_group": f"vmi-publish-{g['group']}",
            "variables": {"APPLIANCES": g["appliances"], "VMI_GROUP": g["group"]},
        }
    return doc


def ci_matrix(settings: Settings, changed_since: str | None = None, fmt: str = "github") -> str:
    """The matrix as JSON: GitHub's ``{"include": [...]}`` or a GitLab child pipeline (JSON is YAML)."""
    appliances = load_all(settings.templates_dir, settings.provisioners_dir)
    selected = (
        set(appliances)
        if changed_since is None
        else affected(settings, appliances, changed_files(settings.root, changed_since))
    )
    groups = matrix_groups(appliances, selected)
    if fmt == "github":
        return json.dumps({"include": groups}, separators=(",", ":"))
    if fmt == "gitlab":
        return json.dumps(gitlab_pipeline(groups), indent=2)
    raise ConfigError(f"--format: {fmt!r} is not one of github, gitlab")
