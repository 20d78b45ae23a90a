"""The CI matrix: groups by baseline in build order, narrowed to what changed in a real git repository."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pipeline.errors import CommandError, ConfigError
from pipeline.rebuild.matrix import ci_matrix
from pipeline.rebuild.scaffold import scaffold_appliance
from pipeline.settings import Settings


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


@pytest.fixture
def repo(project: Settings) -> Settings:
    """The project as a git repository: debian-12, a-science on it, z-gpu on a-science, all committed."""
    scaffold_appliance(project, "a-science", "debian-12")
    scaffold_appliance(project, "z-gpu", "a-science")
    (project.root / ".gitignore").write_text("/output/\n/work/\n/.cache/\n")
    git(project.root, "init", "-q", "-b", "main")
    git(project.root, "add", "-A")
    git(project.root, "commit", "-qm", "initial")
    return project


def groups(settings: Settings, since: str | None = None) -> list[dict[str, str]]:
    doc = json.loads(ci_matrix(settings, changed_since=since))
    assert list(doc) == ["include"]  # anything else would become a matrix dimension in GitHub Actions
    return list(doc["include"])


def test_full_matrix_groups_layered_appliances_with_their_base(repo: Settings) -> None:
    scaffold_appliance(repo, "alpha", "debian-12")
    assert groups(repo) == [{"group": "debian-12", "appliances": "debian-12 a-science alpha z-gpu"}]


def test_changed_since_narrows_to_changed_appliances_and_dependants(repo: Settings) -> None:
    assert groups(repo, "HEAD") == []

    (repo.templates_dir / "a-science" / "a-science.sh").write_text("#!/bin/sh\nset -eu\necho changed\n")
    assert groups(repo, "HEAD") == [{"group": "debian-12", "appliances": "a-science z-gpu"}]
    git(repo.root, "commit", "-qam", "change a-science")
    assert groups(repo, "HEAD~1") == [{"group": "debian-12", "appliances": "a-science z-gpu"}]
    assert groups(repo, "HEAD") == []

    # a shared provisioner used by debian-12 only (upgrade.sh): debian-12 and everything on it
    with (repo.provisioners_dir / "upgrade.sh").open("a") as f:
        f.write("# touched\n")
    assert groups(repo, "HEAD") == [{"group": "debian-12", "appliances": "debian-12 a-science z-gpu"}]
    git(repo.root, "checkout", "-q", "--", "provisioners/upgrade.sh")

    # a new, untracked appliance counts as changed
    scaffold_appliance(repo, "new-one", "debian-12")
    assert groups(repo, "HEAD") == [{"group": "debian-12", "appliances": "new-one"}]

    # documentation alone changes nothing; the build code changes everything
    (repo.root / "docs").mkdir()
    (repo.root / "docs" / "x.md").write_text("x\n")
    assert groups(repo, "HEAD") == [{"group": "debian-12", "appliances": "new-one"}]
    (repo.root / "pipeline" / "builder").mkdir(parents=True)
    (repo.root / "pipeline" / "builder" / "x.py").write_text("\n")
    assert groups(repo, "HEAD")[0]["appliances"] == "debian-12 a-science new-one z-gpu"


def test_a_change_to_the_shared_template_rebuilds_every_appliance(repo: Settings) -> None:
    """The one Packer template builds every appliance: changing it puts them all in the matrix."""
    shared = repo.templates_dir / "_shared" / "qemu.pkr.hcl"
    with shared.open("a") as f:
        f.write("# touched\n")
    assert groups(repo, "HEAD") == [{"group": "debian-12", "appliances": "debian-12 a-science z-gpu"}]


def test_bad_revision_and_format(repo: Settings) -> None:
    with pytest.raises(CommandError, match="fetch-depth"):
        ci_matrix(repo, changed_since="no-such-revision")
    with pytest.raises(ConfigError, match="not a git revision"):
        ci_matrix(repo, changed_since="--output=/tmp/x")
    with pytest.raises(ConfigError, match="--format: 'xml'"):
        ci_matrix(repo, fmt="xml")


def test_gitlab_child_pipeline(repo: Settings) -> None:
    doc = json.loads(ci_matrix(repo, fmt="gitlab"))
    assert doc["include"] == [{"local": ".gitlab/vmi-jobs.yml"}]
    job = doc["appliances:debian-12"]
    assert job == {
        "extends": ".vmi-appliances",
        "resource_group": "vmi-publish-debian-12",
        "variables": {"APPLIANCES": "debian-12 a-science z-gpu", "VMI_GROUP": "debian-12"},
    }
    empty = json.loads(ci_matrix(repo, changed_since="HEAD", fmt="gitlab"))
    assert set(empty) == {"include", "nothing-to-do"}  # a child pipeline needs at least one job
