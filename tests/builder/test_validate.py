"""`invoke validate`: every definition checked, then a real `packer validate` of each template."""

from __future__ import annotations

import difflib
import hashlib
from pathlib import Path

import pytest
import yaml

from pipeline.builder import validate_appliances
from pipeline.errors import ConfigError
from pipeline.settings import Settings


def test_project_appliances_validate(scratch_project: Settings) -> None:
    lines = validate_appliances(scratch_project)
    names = sorted(p.parent.name for p in scratch_project.templates_dir.glob("*/appliance.yaml"))
    assert {"debian-12", "debian-13", "ubuntu-24.04", "almalinux-9"} <= set(names)
    assert sorted(line.split(":")[0] for line in lines if ": ok (" in line) == names, lines


def test_no_provisioner_exists_in_two_places() -> None:
    """One set of provisioners: no appliance folder keeps a script of its own that shadows (or copies)
    one in provisioners/, and no two scripts anywhere have the same content."""
    root = Path(__file__).resolve().parents[2]
    shared = {p.name: p for p in (root / "provisioners").glob("*.sh")}
    assert {"upgrade.sh", "cloud-init.sh", "seal.sh"} <= set(shared)
    seen: dict[bytes, Path] = {}
    clashes = []
    for script in sorted([*shared.values(), *(root / "packer_templates").glob("*/**/*.sh")]):
        if script.parent.parent.name == "packer_templates" and script.name in shared:
            clashes.append(f"{script} shadows provisioners/{script.name}")
        digest = hashlib.sha256(script.read_bytes()).digest()
        if digest in seen:
            clashes.append(f"{script} is a copy of {seen[digest]}")
        seen.setdefault(digest, script)
    assert clashes == []
    for definition in (root / "packer_templates").glob("*/appliance.yaml"):
        for name in yaml.safe_load(definition.read_text()).get("provisioners", []):
            assert (root / "provisioners" / name).is_file() or (definition.parent / name).is_file(), definition


def test_broken_template_is_reported_by_packer(scratch_project: Settings) -> None:
    template = scratch_project.templates_dir / "_shared" / "qemu.pkr.hcl"
    text = template.read_text()
    assert "accelerator        = var.accelerator" in text
    template.write_text(text.replace("accelerator        = var.accelerator", "accelerator = var.nope"))
    with pytest.raises(ConfigError) as err:
        validate_appliances(scratch_project)
    assert any(str(template) in p and "packer validate" in p and "nope" in p for p in err.value.problems), (
        err.value.problems
    )


def test_definition_mistakes_in_all_appliances_come_together(scratch_project: Settings) -> None:
    path = scratch_project.templates_dir / "debian-12" / "appliance.yaml"
    data = yaml.safe_load(path.read_text())
    data["hardware"]["ram_min_mb"] = 100
    data["provisioners"] = ["upgrade.sh", "missing.sh"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        validate_appliances(scratch_project)
    text = "\n".join(err.value.problems)
    assert f"{path}: hardware.ram_min_mb: must be >= 256" in text


def _near_copies(files: list[Path], limit: float = 0.8) -> list[str]:
    """Pairs of files whose lines are ``limit`` alike or more (difflib's ratio): copies that drifted."""
    texts = {f: f.read_text().splitlines() for f in files}
    found = []
    for i, a in enumerate(files):
        for b in files[i + 1 :]:
            ratio = difflib.SequenceMatcher(None, texts[a], texts[b], autojunk=False).ratio()
            if ratio >= limit:
                found.append(f"{b} is {ratio:.0%} like {a}")
    return found


def test_no_template_or_provisioner_exists_in_two_places() -> None:
    """One shared Packer template and one set of provisioners: every appliance folder holds its
    definition (and scripts of its own) only, and no two templates or scripts anywhere are copies of
    each other, identical or near-identical."""
    root = Path(__file__).resolve().parents[2]
    templates = sorted((root / "packer_templates").rglob("*.pkr.hcl"))
    assert templates == [root / "packer_templates" / "_shared" / "qemu.pkr.hcl"]
    scripts = sorted([*(root / "provisioners").rglob("*.sh"), *(root / "packer_templates").rglob("*.sh")])
    assert len(scripts) >= 3
    assert _near_copies(templates + scripts) == []
    for folder in (root / "packer_templates").iterdir():
        if folder.name != "_shared":
            assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(".sh")) == ["appliance.yaml"], folder


def test_the_copy_check_sees_a_drifted_copy(tmp_path: Path) -> None:
    """The check above can fail: a template copy with a changed line and a comment is still found."""
    shared = Path(__file__).resolve().parents[2] / "packer_templates" / "_shared" / "qemu.pkr.hcl"
    copy = tmp_path / "mine.pkr.hcl"
    copy.write_text("# my own\n" + shared.read_text().replace('default     = "1s"', 'default     = "10s"'))
    other = tmp_path / "seal.sh"
    other.write_text("#!/bin/sh\necho unrelated\n")
    assert _near_copies([shared, copy, other]) == [f"{copy} is {_ratio(shared, copy):.0%} like {shared}"]


def _ratio(a: Path, b: Path) -> float:
    return difflib.SequenceMatcher(None, a.read_text().splitlines(), b.read_text().splitlines(), autojunk=False).ratio()


def test_a_missing_shared_template_is_one_line_naming_the_definition(scratch_project: Settings) -> None:
    shared = scratch_project.templates_dir / "_shared" / "qemu.pkr.hcl"
    shared.unlink()
    with pytest.raises(ConfigError) as err:
        validate_appliances(scratch_project)
    definition = scratch_project.templates_dir / "debian-12" / "appliance.yaml"
    assert f"{definition}: template: {shared} does not exist" in err.value.problems


def test_an_appliances_variables_reach_the_shared_template(scratch_project: Settings) -> None:
    """The shared template's own knobs are set from appliance.yaml; packer validate checks their types."""
    path = scratch_project.templates_dir / "debian-12" / "appliance.yaml"
    data = yaml.safe_load(path.read_text())
    data["variables"] = {"provisioner_env": '["VMI_DEFAULT_USER=cloud"]', "boot_wait": "2s"}
    path.write_text(yaml.safe_dump(data))
    assert "debian-12: ok (packer_templates/_shared/qemu.pkr.hcl)" in validate_appliances(scratch_project)
    data["variables"] = {"ssh_handshake_attempts": "many"}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        validate_appliances(scratch_project)
    assert any("packer validate" in p and "ssh_handshake_attempts" in p for p in err.value.problems), err.value.problems
