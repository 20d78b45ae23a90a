"""`invoke new-appliance`: a layered appliance that validates at once."""

from __future__ import annotations

import os
import shutil

import pytest
import yaml

from pipeline.appliance import BaseKind, Firmware, load_all
from pipeline.errors import ConfigError
from pipeline.rebuild.scaffold import scaffold_appliance
from pipeline.settings import Settings
from tests.rebuild.conftest import ROOT


def test_scaffold_layered_appliance_validates(project: Settings) -> None:
    out = scaffold_appliance(project, "debian-12-science", "debian-12")
    folder = project.templates_dir / "debian-12-science"
    # the definition and the appliance's own script: the Packer template is the shared one, not a copy
    assert sorted(p.name for p in folder.iterdir()) == ["appliance.yaml", "debian-12-science.sh"]
    assert "packer_templates/debian-12-science/debian-12-science.sh" in out
    assert "invoke build --appliance debian-12-science" in out

    apps = load_all(project.templates_dir, project.provisioners_dir)
    new, base = apps["debian-12-science"], apps["debian-12"]
    assert new.base.kind is BaseKind.APPLIANCE and new.base.appliance == "debian-12"
    assert new.provisioners == (base.provisioners[0], "debian-12-science.sh", base.provisioners[-1])
    assert new.provisioners == ("upgrade.sh", "debian-12-science.sh", "seal.sh")
    assert all(p.is_file() for p in new.provisioner_paths(project.provisioners_dir))
    assert (new.os, new.arch, new.hardware) == (base.os, base.arch, base.hardware)
    assert new.vos == base.vos and new.rebuild.auto_endorse is False
    assert new.template is None and new.template_path == base.template_path
    assert new.template_path == project.templates_dir / "_shared" / "qemu.pkr.hcl"
    stub = folder / "debian-12-science.sh"
    assert os.access(stub, os.X_OK) and "set -eu" in stub.read_text()


def test_scaffold_on_a_base_with_its_own_sealer(project: Settings) -> None:
    own = project.templates_dir / "debian-12" / "seal.sh"
    shutil.copy(project.provisioners_dir / "seal.sh", own)
    scaffold_appliance(project, "on-own-sealer", "debian-12")
    new = load_all(project.templates_dir, project.provisioners_dir)["on-own-sealer"]
    assert new.provisioners[-1] == "../debian-12/seal.sh"
    assert new.provisioner_paths(project.provisioners_dir)[-1].resolve() == own.resolve()


def test_scaffold_on_a_layered_base(project: Settings) -> None:
    scaffold_appliance(project, "middle", "debian-12")
    scaffold_appliance(project, "top", "middle")
    data = yaml.safe_load((project.templates_dir / "top" / "appliance.yaml").read_text())
    assert data["base"] == {"appliance": "middle"} and data["provisioners"] == ["upgrade.sh", "top.sh", "seal.sh"]
    assert set(load_all(project.templates_dir, project.provisioners_dir)) == {"debian-12", "middle", "top"}


@pytest.mark.parametrize(
    ("name", "base", "message"),
    [
        ("Bad_Name", "debian-12", r"new-appliance: name 'Bad_Name': must match"),
        ("debian-12", "debian-12", r"debian-12: already exists"),
        ("fine", "no-such-base", r"no appliance named 'no-such-base'"),
    ],
)
def test_scaffold_refuses_bad_input_and_leaves_nothing(project: Settings, name: str, base: str, message: str) -> None:
    before = sorted(p.name for p in project.templates_dir.iterdir())
    with pytest.raises(ConfigError, match=message):
        scaffold_appliance(project, name, base)
    assert sorted(p.name for p in project.templates_dir.iterdir()) == before


def test_scaffold_defaults_to_debian_13_and_keeps_its_firmware(project: Settings) -> None:
    shutil.copytree(ROOT / "packer_templates" / "debian-13", project.templates_dir / "debian-13")
    scaffold_appliance(project, "trixie-science")
    apps = load_all(project.templates_dir, project.provisioners_dir)
    new = apps["trixie-science"]
    assert new.base.appliance == "debian-13"
    assert new.os.codename == "trixie"
    assert new.firmware is Firmware.HYBRID is apps["debian-13"].firmware
