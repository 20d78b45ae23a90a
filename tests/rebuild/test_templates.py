"""The Ubuntu and AlmaLinux appliances (not buildable here: no download) load and resolve their files."""

from __future__ import annotations

import shutil

import pytest

from pipeline.appliance import BaseKind, load_all
from pipeline.builder import validate_appliances
from pipeline.errors import ConfigError
from pipeline.rebuild.scaffold import scaffold_appliance
from pipeline.settings import Settings

from .conftest import ROOT


@pytest.mark.parametrize("name", ["ubuntu-24.04", "almalinux-9"])
def test_upstream_image_appliances_load(name: str) -> None:
    apps = load_all(ROOT / "packer_templates", ROOT / "provisioners")
    a = apps[name]
    assert a.base.kind is BaseKind.IMAGE and a.base.image is not None
    assert a.base.image.url.startswith("https://") and a.base.image.checksum.startswith("sha256:")
    assert "NOT BUILT ON THIS PROJECT'S DEVELOPMENT MACHINE" in a.definition_path.read_text()
    paths = a.provisioner_paths(ROOT / "provisioners")
    assert all(p.is_file() for p in paths)
    # one set of provisioners: the distribution family (apt, dnf) comes from the guest's /etc/os-release
    assert {p.parent for p in paths} == {ROOT / "provisioners"}


def test_invoke_validate_passes_for_every_shipped_appliance_and_a_fresh_scaffold(project: Settings) -> None:
    """`invoke validate` (definitions + `packer validate`) on the repository's appliances plus a new one."""
    for name in ("ubuntu-24.04", "almalinux-9"):
        shutil.copytree(ROOT / "packer_templates" / name, project.templates_dir / name)
    scaffold_appliance(project, "debian-12-science", "debian-12")
    lines = validate_appliances(project)
    assert sorted(line.split(":")[0] for line in lines) == [
        "almalinux-9",
        "debian-12",
        "debian-12-science",
        "ubuntu-24.04",
    ]
    assert all(": ok (" in line for line in lines)


def test_invoke_validate_catches_a_broken_template_of_an_appliances_own(project: Settings) -> None:
    """An appliance may still name a template of its own (the schema's ``template``); validate checks it."""
    scaffold_appliance(project, "broken", "debian-12")
    folder = project.templates_dir / "broken"
    template = folder / "broken.pkr.hcl"
    shared = project.templates_dir / "_shared" / "qemu.pkr.hcl"
    template.write_text(shared.read_text().replace("var.base_image", "var.no_such_variable"))
    with (folder / "appliance.yaml").open("a") as f:
        f.write("template: broken.pkr.hcl\n")
    with pytest.raises(ConfigError) as e:
        validate_appliances(project)
    assert [p for p in e.value.problems if p.startswith(f"{template}: packer validate:")], e.value.problems
    assert not any(str(shared) in p for p in e.value.problems)


def test_a_scaffold_on_a_base_with_its_own_template_gets_that_template(project: Settings) -> None:
    scaffold_appliance(project, "own", "debian-12")
    shared = project.templates_dir / "_shared" / "qemu.pkr.hcl"
    (project.templates_dir / "own" / "own.pkr.hcl").write_text(shared.read_text())
    with (project.templates_dir / "own" / "appliance.yaml").open("a") as f:
        f.write("template: own.pkr.hcl\n")
    scaffold_appliance(project, "on-own", "own")
    child = load_all(project.templates_dir, project.provisioners_dir)["on-own"]
    assert child.template == "on-own.pkr.hcl" and child.template_path.read_text().endswith(shared.read_text())
