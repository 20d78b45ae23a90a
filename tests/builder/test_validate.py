"""`invoke validate`: every definition checked, then a real `packer validate` of each template."""

from __future__ import annotations

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
    template = scratch_project.templates_dir / "debian-12" / "debian-12.pkr.hcl"
    template.write_text(template.read_text().replace("accelerator      = var.accelerator", "accelerator = var.nope"))
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
