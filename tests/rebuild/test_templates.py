"""The Ubuntu and AlmaLinux appliances (not buildable here: no download) load and resolve their files."""

from __future__ import annotations

import pytest

from pipeline.appliance import BaseKind, load_all

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
    # the distribution's own default user and package manager, from the appliance folder
    own = {p.name for p in paths if p.parent == a.directory}
    assert own == ({"cloud-init.sh"} if name == "ubuntu-24.04" else {"upgrade.sh", "cloud-init.sh", "seal.sh"})
