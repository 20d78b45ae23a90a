"""The CI workflow files: YAML lint, structure (no JSON schema is downloadable here), and every
`invoke` command they run exists with the options they pass, run the README's way."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.rebuild.matrix import gitlab_pipeline

ROOT = Path(__file__).resolve().parents[2]
GITHUB = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
GITLAB = [ROOT / ".gitlab-ci.yml", ROOT / ".gitlab" / "vmi-jobs.yml"]
YAMLLINT = (
    "{extends: default, rules: {line-length: {max: 120}, document-start: disable,"
    " truthy: {allowed-values: ['true', 'false', 'on']}, comments: {min-spaces-from-content: 2}}}"
)
INVOKE = re.compile(r"(?P<prefix>[\w./-]*)invoke\s+(?P<task>[a-z][a-z-]*)(?P<args>[^\n;&|]*)")
PUBLISHING = {"rebuild", "publish", "release", "endorse"}


def load(path: Path) -> dict[Any, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


def scripts_of(job: dict[str, Any]) -> list[str]:
    """Shell text a job runs: GitHub steps' `run`, GitLab's before_script/script."""
    texts = [s["run"] for s in job.get("steps", []) if "run" in s]
    for key in ("before_script", "script"):
        value = job.get(key, [])
        texts += [value] if isinstance(value, str) else list(value)
    return texts


def jobs_of(doc: dict[Any, Any]) -> dict[str, dict[str, Any]]:
    """GitHub's jobs, or GitLab's script jobs with the default before_script they inherit."""
    if "jobs" in doc:
        return dict(doc["jobs"])
    default = doc.get("default", {})
    jobs = {}
    for name, job in doc.items():
        if isinstance(job, dict) and "script" in job:
            inherits = job.get("inherit", {}).get("default", True) is not False
            jobs[name] = {"before_script": default.get("before_script", []) if inherits else [], **job}
    return jobs


def invocations(text: str) -> list[tuple[str, str, list[str]]]:
    return [
        (m["prefix"], m["task"], re.findall(r"(--[a-z][a-z-]*)", m["args"]))
        for m in INVOKE.finditer(text)
        if not m["prefix"].startswith("#")
    ]


@cache
def task_options(task: str) -> set[str] | None:
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", task, "--help"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        return None
    return set(re.findall(r"(--[a-z][a-z-]*)", proc.stdout))


def test_yamllint() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "yamllint", "-s", "-d", YAMLLINT, *map(str, GITHUB + GITLAB)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {p.name for p in GITHUB} == {"ci.yml", "rebuild.yml"}


@pytest.mark.parametrize("path", GITHUB + GITLAB, ids=lambda p: p.name)
def test_every_invoke_command_exists_and_runs_the_readme_way(path: Path) -> None:
    doc = load(path)
    found = 0
    for name, job in jobs_of(doc).items():
        texts = scripts_of(job)
        runs = [inv for t in texts for inv in invocations(t)]
        if not runs:
            continue
        joined = "\n".join(texts)
        assert joined.index("./scripts/setup") < joined.index(".venv/bin/invoke"), f"{path.name}:{name}: set up first"
        for prefix, task, options in runs:
            found += 1
            assert prefix == ".venv/bin/", f"{path.name}:{name}: run .venv/bin/invoke (README), not {prefix!r}"
            known = task_options(task)
            assert known is not None, f"{path.name}:{name}: `invoke {task}` is not a task"
            assert set(options) <= known, f"{path.name}:{name}: `invoke {task}` has no {set(options) - known}"
    assert found, f"{path.name} runs no invoke command"


def github_on(doc: dict[Any, Any]) -> dict[str, Any]:
    on = doc.get("on", doc.get(True))  # YAML 1.1 reads a bare `on` key as true
    assert isinstance(on, dict)
    return on


@pytest.mark.parametrize("path", GITHUB, ids=lambda p: p.name)
def test_github_workflow_structure(path: Path) -> None:
    doc = load(path)
    assert isinstance(doc.get("name"), str) and doc["permissions"] == {"contents": "read"}
    on = github_on(doc)
    assert set(on) <= {"push", "pull_request", "schedule", "workflow_dispatch"}
    for entry in on.get("schedule", []):
        fields = entry["cron"].split()
        assert len(fields) == 5 and all(re.fullmatch(r"[0-9*/,-]+", f) for f in fields), entry
    jobs = doc["jobs"]
    for name, job in jobs.items():
        where = f"{path.name}:{name}"
        assert {"runs-on", "steps", "timeout-minutes"} <= set(job), where
        needs = [job["needs"]] if isinstance(job.get("needs"), str) else job.get("needs", [])
        assert set(needs) <= set(jobs) - {name}, where
        for step in job["steps"]:
            assert ("uses" in step) != ("run" in step), f"{where}: a step has exactly one of uses/run"
            if "uses" in step:
                assert re.fullmatch(r"actions/[a-z-]+@v\d+", step["uses"]), f"{where}: {step['uses']}"
        matrix = job.get("strategy", {}).get("matrix")
        if matrix is not None:
            m = re.fullmatch(r"\$\{\{ fromJSON\(needs\.([a-z-]+)\.outputs\.([a-z-]+)\) \}\}", matrix)
            assert m and m[1] in needs and m[2] in jobs[m[1]]["outputs"], f"{where}: matrix from a needed output"
        text = yaml.safe_dump(job)
        publishes = any(task in PUBLISHING for t in scripts_of(job) for _, task, _ in invocations(t))
        if publishes:
            # never from a pull request; never two runs publishing one appliance group at once
            assert "pull_request" not in on or "github.event_name == 'push'" in job["if"], where
            assert job["concurrency"] == {"group": "vmi-publish-${{ matrix.group }}", "cancel-in-progress": False}
            assert job.get("environment") == "publish", where
        else:
            assert "secrets." not in text, f"{where}: secrets only reach publishing jobs"
        for secret in re.findall(r"secrets\.([A-Za-z_]+)", text):
            assert secret.isupper(), where
        assert not re.search(r"(token|password|secret|key)\s*[:=]\s*['\"]?[A-Za-z0-9/+]{16,}", text, re.I), where


def test_github_schedule_and_pr_split() -> None:
    ci, rebuild = (load(p) for p in GITHUB)
    assert "schedule" in github_on(rebuild) and "pull_request" in github_on(ci)
    assert ci["jobs"]["build"]["if"].startswith("github.event_name == 'pull_request'")


def test_gitlab_pipeline_structure() -> None:
    doc, template = load(GITLAB[0]), load(GITLAB[1])
    stages = doc["stages"]
    jobs = {k: v for k, v in doc.items() if k not in {"stages", "default", "variables", "workflow"}}
    for name, job in jobs.items():
        assert job["stage"] in stages, name
        assert ("script" in job) != ("trigger" in job), name
    trigger = jobs["appliances"]["trigger"]
    producer = trigger["include"][0]
    assert producer["artifact"] in jobs[producer["job"]]["artifacts"]["paths"]
    assert producer["job"] in jobs["appliances"]["needs"]
    # every way the trigger runs sets VMI_MODE for the child jobs; merge requests only build
    modes = {r["if"]: r["variables"]["VMI_MODE"] for r in jobs["appliances"]["rules"]}
    assert set(modes.values()) == {"build", "rebuild"}
    assert modes['$CI_PIPELINE_SOURCE == "merge_request_event"'] == "build"
    # the child pipeline `invoke ci-matrix --format gitlab` prints extends the template shipped here
    child = gitlab_pipeline([{"group": "debian-12", "appliances": "debian-12 debian-12-science"}])
    assert child["include"] == [{"local": str(GITLAB[1].relative_to(ROOT))}]
    job = child["appliances:debian-12"]
    assert job["extends"] in template and job["resource_group"] == "vmi-publish-debian-12"
    body = "\n".join(scripts_of(template[job["extends"]]))
    assert all(f"${v}" in body for v in ("APPLIANCES", "VMI_MODE")) and "$VMI_GROUP" in json.dumps(template)
