"""`invoke validate`: every definition checked, then a real `packer validate` of each template."""

from __future__ import annotations

import pytest
import yaml

from pipeline.build import validate_appliances
from pipeline.errors import ConfigError
from pipeline.settings import Settings


def test_project_appliances_validate(scratch_project: Settings) -> None:
    lines = validate_appliances(scratch_project)
    assert any(line.startswith("debian-12: ok") for line in lines), lines


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
