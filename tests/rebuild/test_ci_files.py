"""The CI workflow files: YAML lint, structure (no JSON schema is downloadable here), and every
`invoke` command they run exists with the options they pass, run the README's way."""

from __future__ import annotations

import dataclasses
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
from pipeline.settings import Settings

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


# --- issue 13: fresh runners; no build state in a forge cache; everything used exists and is documented

DOCS = ROOT / "docs" / "ci.md"
SETTINGS_ENV = {f"VMI_{f.name.upper()}" for f in dataclasses.fields(Settings) if f.name != "root"}
BOTO3_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}  # boto3's standard credential variables
SPEED_ONLY = {".cache/vmi/archive", ".cache/vmi/bootstrap"}  # package indexes, bootstrap tarballs
FORGE_REF = re.compile(r"\$\{\{ (vars|secrets)\.([A-Za-z0-9_]+) \}\}")
NAMED = re.compile(r"\b((?:VMI|AWS)_[A-Z0-9_]+)\b")


@cache
def code_text() -> str:
    return "\n".join(p.read_text() for p in sorted((ROOT / "pipeline").rglob("*.py")))


def read_by_the_pipeline(name: str) -> bool:
    """A setting (VMI_<FIELD>), a variable the code reads by name, or boto3's credentials."""
    return name in SETTINGS_ENV or name in BOTO3_ENV or f'"{name}"' in code_text()


def cache_paths() -> list[tuple[str, str]]:
    found = []
    for path in GITHUB:
        for name, job in load(path)["jobs"].items():
            for step in job["steps"]:
                if step.get("uses", "").startswith("actions/cache@"):
                    found += [(f"{path.name}:{name}", p) for p in step["with"]["path"].split()]
    template = load(GITLAB[1])
    for name, job in [*load(GITLAB[0]).items(), *template.items()]:
        if isinstance(job, dict) and "cache" in job:
            found += [(f"gitlab:{name}", p) for p in job["cache"]["paths"]]
    return found


def test_forge_caches_hold_no_build_state() -> None:
    paths = cache_paths()
    assert {w.split(":")[0] for w, _ in paths} == {"ci.yml", "rebuild.yml", "gitlab"}
    for where, p in paths:
        assert p.rstrip("/") in SPEED_ONLY, f"{where}: {p} is not a speed-only cache (output/ and manifests are state)"
    for path in GITHUB + GITLAB:
        text = path.read_text()
        assert "manifest.json" not in text and "output/" not in text.replace("# ", ""), path.name


@pytest.mark.parametrize("path", GITHUB + GITLAB[:1], ids=lambda p: p.name)
def test_every_variable_and_secret_exists_and_is_documented(path: Path) -> None:
    text = path.read_text()
    documented = header_names(path)
    used = {name for _, name in FORGE_REF.findall(text)}
    assert used <= documented, f"{path.name}: used but not documented in its header: {used - documented}"
    docs = DOCS.read_text()
    for name in documented | used:
        assert read_by_the_pipeline(name), f"{path.name}: {name} is read by nothing in pipeline/"
        assert f"`{name}`" in docs, f"docs/ci.md does not explain {name}"
    # each kind in the right place: secrets as secrets, settings as variables
    for kind, name in FORGE_REF.findall(text):
        secret = name in BOTO3_ENV or name.endswith("_TOKEN")
        assert (kind == "secrets") == secret, f"{path.name}: {name} must be a {'secret' if secret else 'variable'}"
    # every GitHub step's environment is read by the pipeline or by the step's own script
    for name, job in jobs_of(load(path)).items():
        for step in job.get("steps", []):
            for var in step.get("env", {}):
                assert read_by_the_pipeline(var) or f"${var}" in step.get("run", ""), f"{name}: env {var} unused"


def header_names(path: Path) -> set[str]:
    """Variables and secrets the file's leading comment documents."""
    lines = path.read_text().splitlines()
    header = lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))]
    return set(NAMED.findall("\n".join(header)))


def test_the_platforms_need_the_same_settings() -> None:
    rebuild = header_names(ROOT / ".github" / "workflows" / "rebuild.yml")
    assert rebuild == header_names(GITLAB[0]) and len(rebuild) == 8
    assert rebuild == set(re.findall(r"^\| `([A-Z0-9_]+)` \|", DOCS.read_text(), re.M))


@pytest.mark.parametrize("path", [*GITHUB, *GITLAB, DOCS], ids=lambda p: p.name)
def test_commands_named_in_comments_and_docs_exist(path: Path) -> None:
    """`invoke <task> --option` quoted in the files' comments and in docs/ci.md is a real task and option."""
    text = path.read_text()
    quoted = re.findall(r"`((?:\.venv/bin/)?invoke [^`]+)`", text) + [
        m for line in text.splitlines() if line.lstrip().startswith("#") for m in re.findall(r"`(invoke [^`]+)`", line)
    ]
    for command in quoted:
        for _, task, options in invocations(command):
            known = task_options(task)
            assert known is not None, f"{path.name}: `invoke {task}` is not a task"
            assert set(options) <= known, f"{path.name}: `invoke {task}` has no {set(options) - known}"
    if path == DOCS:
        assert quoted, "docs/ci.md names the commands it relies on"
