"""The command line as users type it, through the real `invoke` executable: Invoke's own help for
every task, Invoke's own message for a missing required argument, and required arguments still
given as `--name value` (README and docs spell them that way)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from invoke import Collection

import tasks

ROOT = Path(__file__).resolve().parents[1]
INVOKE = Path(sys.executable).parent / "invoke"
COLLECTION = Collection.from_module(tasks)
TASKS = sorted(COLLECTION.task_names)
REQUIRED = {name: list(COLLECTION[name].positional) for name in TASKS}


def invoke(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`invoke ARGS` in the checkout, with every place a task could write under ``tmp_path``."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "VMI_OUTPUT_DIR": str(tmp_path / "output"),
        "VMI_WORK_DIR": str(tmp_path / "work"),
        "VMI_CACHE_DIR": str(tmp_path / "cache"),
        "VMI_CATALOGUE": f"sqlite:///{tmp_path / 'catalogue.db'}",
        "VMI_REPOSITORY": (tmp_path / "repository").as_uri(),
    }
    return subprocess.run(
        [str(INVOKE), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_collection_is_the_one_users_get(tmp_path: Path) -> None:
    listed = invoke(tmp_path, "--list", "--list-format=json")
    assert listed.returncode == 0, listed.stderr
    assert {t["name"] for t in json.loads(listed.stdout)["tasks"]} == set(TASKS)
    assert REQUIRED["build"] == ["appliance"] and REQUIRED["endorse"] == ["appliance", "version", "vo"]
    assert len(HELP_FORMS) > len(TASKS) + 10


# every task's --help; for those with required arguments (whose parser state differs) also `-h` and
# `invoke --help TASK`
HELP_FORMS = [(task, "{task} --help") for task in TASKS] + [
    (task, form) for task in TASKS if REQUIRED[task] for form in ("{task} -h", "--help {task}")
]


@pytest.mark.parametrize(("task", "form"), HELP_FORMS)
def test_every_task_answers_help(task: str, form: str, tmp_path: Path) -> None:
    proc = invoke(tmp_path, *form.format(task=task).split())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"Usage: inv[oke] [--core-opts] {task} ")
    first_line = (COLLECTION[task].__doc__ or "").strip().splitlines()[0]
    assert f"Docstring:\n  {first_line}" in proc.stdout
    for name in REQUIRED[task]:
        assert f"--{name.replace('_', '-')}" in proc.stdout  # required arguments are listed as options too
    assert not (tmp_path / "output").exists() and not (tmp_path / "catalogue.db").exists()  # help ran nothing


@pytest.mark.parametrize("task", [t for t in TASKS if REQUIRED[t]])
def test_a_missing_required_argument_is_refused_by_invoke(task: str, tmp_path: Path) -> None:
    proc = invoke(tmp_path, task)
    assert proc.returncode != 0
    named = ", ".join(f"'{n}'" for n in REQUIRED[task])
    assert proc.stderr.strip() == f"'{task}' did not receive required positional arguments: {named}"


def test_an_argument_left_out_among_others_is_named(tmp_path: Path) -> None:
    proc = invoke(tmp_path, "endorse", "--appliance", "debian-12", "--vo", "vo.example.org")
    assert proc.returncode != 0
    assert proc.stderr.strip() == "'endorse' did not receive required positional arguments: 'version'"


UNKNOWN = "error: {root}/packer_templates: no appliance named 'no-such'"


@pytest.mark.parametrize(
    ("args", "code", "said"),
    [
        # the README's spelling: required arguments as `--name value`, in any order
        ("build --appliance no-such --version 2026.01.01 --force", 2, UNKNOWN),
        ("build --version 2026.01.01 --appliance=no-such", 2, UNKNOWN),
        ("build -a no-such", 2, UNKNOWN),
        ("package --appliance no-such --version 1", 2, UNKNOWN),
        ("package --disk any.qcow2 --appliance no-such --out {tmp}/out", 2, UNKNOWN),
        ("publish --appliance no-such --dry-run", 2, UNKNOWN),
        ("release --appliance no-such", 2, UNKNOWN),
        ("audit-image --appliance no-such", 2, UNKNOWN),
        ("diff --appliance no-such 2026.11.22 2026.11.23", 2, "{tmp}/output/no-such/2026.11.22/manifest.json"),
        ("diff 2026.11.22 2026.11.23 --appliance no-such --json", 2, "{tmp}/output/no-such/2026.11.22/manifest.json"),
        ("verify-list {tmp}/image.list --ca {tmp}/ca.pem", 2, "{tmp}/ca.pem: CA certificate file"),
        ("verify-list --ca {tmp}/ca.pem {tmp}/image.list", 2, "{tmp}/ca.pem: CA certificate file"),
        ("verify-ova {tmp}/x.ova", 1, "{tmp}/x.ova: cannot open"),
        ("verify-ova --path {tmp}/x.ova", 1, "{tmp}/x.ova: cannot open"),
        # and without the flag, in the order the usage line shows
        ("build no-such", 2, UNKNOWN),
    ],
)
def test_required_arguments_given_the_way_users_type_them(args: str, code: int, said: str, tmp_path: Path) -> None:
    proc = invoke(tmp_path, *args.format(tmp=tmp_path).split())
    assert (proc.returncode, proc.stdout) == (code, ""), proc.stderr
    assert said.format(root=ROOT, tmp=tmp_path) in proc.stderr
