"""Appliance definitions: good/bad tables, every error with file and field, JSON/YAML round-trip."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.appliance import BaseKind, build_order, from_dict, load_all, load_appliance
from pipeline.errors import ConfigError

GOOD: dict[str, Any] = {
    "name": "demo",
    "title": "Demo",
    "description": "A demo appliance",
    "os": {"family": "linux", "name": "Debian", "version": "12"},
    "base": {"bootstrap": {"suite": "bookworm"}},
    "hardware": {"cores_min": 1, "ram_min_mb": 512, "disk_gb": 3},
    "template": "demo.pkr.hcl",
    "provisioners": ["a.sh"],
}


def write_appliance(root: Path, data: dict[str, Any], name: str | None = None) -> Path:
    d = root / (name or data.get("name", "demo"))
    d.mkdir(parents=True, exist_ok=True)
    (d / "appliance.yaml").write_text(yaml.safe_dump(data))
    (d / str(data.get("template", "demo.pkr.hcl"))).write_text("# template\n")
    (d / "a.sh").write_text("#!/bin/sh\nset -eu\n")
    return d


def test_good_definition_gets_schema_defaults(tmp_path: Path) -> None:
    a = load_appliance(write_appliance(tmp_path, GOOD), provisioners_dir=tmp_path / "none")
    assert a.base.kind is BaseKind.BOOTSTRAP
    assert a.base.bootstrap is not None and a.base.bootstrap.mirror == "http://deb.debian.org/debian"
    assert a.hardware.ram_recommended_mb == 512 and a.hardware.cores_recommended == 1
    assert a.rebuild.keep_versions == 4 and a.rebuild.expires_days == 365
    assert a.arch == "x86_64"
    assert a.unattended_upgrades is False  # the audit then requires them off
    assert (a.oci.tag, a.oci.rolling_tag, a.os.distro, a.os.admin_user) == (
        "{os_version}-{version}",
        "{os_version}",
        None,
        None,
    )
    assert a.oci.render("demo", "12", "x86_64", "2026.12.02") == ("12-2026.12.02", "12")


def test_tag_scheme_and_image_labels_from_the_definition(tmp_path: Path) -> None:
    data = {**GOOD, "oci": {"tag": "{name}-{os_version}-{arch}-{version}", "rolling_tag": ""}}
    data["os"] = {**GOOD["os"], "distro": "debian", "admin_user": "cloud-user"}
    a = load_appliance(write_appliance(tmp_path, data))
    assert a.oci.render(a.name, a.os.version, a.arch, "2026.12.02") == ("demo-12-x86_64-2026.12.02", None)
    assert (a.os.distro, a.os.admin_user) == ("debian", "cloud-user")
    assert from_dict(yaml.safe_load(yaml.safe_dump(a.to_dict())), a.directory) == a


def test_round_trip_through_yaml_and_json(tmp_path: Path) -> None:
    a = load_appliance(write_appliance(tmp_path, GOOD))
    again = from_dict(yaml.safe_load(yaml.safe_dump(a.to_dict())), a.directory)
    assert again == a
    assert from_dict(json.loads(json.dumps(a.to_dict())), a.directory) == a


def _with(path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = data
    for p in parents:
        node = node[p]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return data


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (_with("hardware.ram_min_mb", 128), "hardware.ram_min_mb: must be >= 256"),
        (_with("hardware.cores_min", 0), "hardware.cores_min: must be >= 1"),
        (_with("title", ...), "title: is required"),
        (_with("name", "Bad Name"), "name: 'Bad Name' must be lower-case letters and digits"),
        (_with("os.family", "plan9"), "os.family: 'plan9' is not one of linux, windows, bsd"),
        (_with("base", {}), "base: must set exactly one of its options"),
        (_with("base", {"bootstrap": {"suite": "bookworm"}, "appliance": "x"}), "base: must set exactly one"),
        (_with("base", {"image": {"url": "https://x/y.qcow2", "checksum": "md5:abc"}}), "base.image.checksum"),
        (_with("template", "x.json"), "template: 'x.json' must be a file name ending in .pkr.hcl"),
        (_with("colour", "blue"), "colour: is not a known field"),
        (_with("unattended_upgrades", "yes"), "unattended_upgrades: "),
        (_with("hardware.ram_recommended_mb", 300), "hardware.ram_recommended_mb: must be >= hardware.ram_min_mb"),
        (_with("os.admin_user", "Root User"), "os.admin_user: 'Root User' must be a Unix user name"),
        (_with("os.distro", "Debian"), "os.distro: 'Debian' must be a Glance os_distro name"),
        (_with("oci", {"tag": "{os_version}"}), "oci.tag: '{os_version}' must contain {version}"),
        (_with("oci", {"tag": "{version}-{colour}"}), "oci.tag: '{version}-{colour}' must be tag characters"),
        (_with("oci", {"rolling_tag": "{version}"}), "oci.rolling_tag: '{version}' must be tag characters"),
        (_with("oci", {"tag": "-{version}"}), "oci.tag: makes '-2026.12.02.99', not a valid OCI tag"),
        (_with("oci", {"tag": "{version}", "rolling_tag": "x" * 100, "x": 1}), "oci.x: is not a known field"),
    ],
)
def test_bad_definitions_name_file_and_field(tmp_path: Path, data: dict[str, Any], expected: str) -> None:
    d = write_appliance(tmp_path, data, name="demo")
    with pytest.raises(ConfigError) as err:
        load_appliance(d)
    assert any(str(d / "appliance.yaml") in p and expected in p for p in err.value.problems), err.value.problems


def test_all_mistakes_reported_at_once(tmp_path: Path) -> None:
    data = _with("hardware.ram_min_mb", 100)
    data["title"] = ""
    data["os"]["family"] = "plan9"
    d = write_appliance(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_appliance(d)
    assert len(err.value.problems) == 3


def test_missing_template_and_provisioner(tmp_path: Path) -> None:
    d = write_appliance(tmp_path, GOOD)
    (d / "demo.pkr.hcl").unlink()
    (d / "a.sh").unlink()
    with pytest.raises(ConfigError) as err:
        load_appliance(d, provisioners_dir=tmp_path / "provisioners")
    assert any("template: demo.pkr.hcl does not exist" in p for p in err.value.problems)


def test_unknown_base_and_cycles(tmp_path: Path) -> None:
    a = copy.deepcopy(GOOD) | {"name": "a", "base": {"appliance": "b"}}
    b = copy.deepcopy(GOOD) | {"name": "b", "base": {"appliance": "a"}}
    c = copy.deepcopy(GOOD) | {"name": "c", "base": {"appliance": "zzz"}}
    for data in (a, b, c):
        write_appliance(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_all(tmp_path)
    text = "\n".join(err.value.problems)
    assert "unknown appliance 'zzz'" in text
    assert "layering cycle" in text


def test_build_order_puts_bases_first(tmp_path: Path) -> None:
    write_appliance(tmp_path, copy.deepcopy(GOOD) | {"name": "zbase"})
    write_appliance(tmp_path, copy.deepcopy(GOOD) | {"name": "alayer", "base": {"appliance": "zbase"}})
    write_appliance(tmp_path, copy.deepcopy(GOOD) | {"name": "mtop", "base": {"appliance": "alayer"}})
    order = [a.name for a in build_order(load_all(tmp_path).values())]
    assert order == ["zbase", "alayer", "mtop"]


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    d = tmp_path / "demo"
    d.mkdir()
    (d / "appliance.yaml").write_text("name: demo\ntitle: [unclosed\n")
    with pytest.raises(ConfigError, match=r"appliance.yaml:\d+:\d+: not valid YAML"):
        load_appliance(d)
