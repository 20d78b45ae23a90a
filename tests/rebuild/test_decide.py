"""The rebuild decision and plan on real manifests, real appliance definitions and recorded package indexes."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from pipeline.appliance import Appliance
from pipeline.errors import ConfigError
from pipeline.manifest import BaseRef
from pipeline.rebuild.archive import ArchiveIndex
from pipeline.rebuild.decide import Reason
from pipeline.rebuild.plan import InputsOf, make_plan, select
from pipeline.settings import Settings

from .conftest import DIGEST_A, Mirror, manifest, save

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
DIGEST_B = "b" * 64
CURRENT = (("openssl", "3.0.22-1~deb12u2"), ("openssh-client", "1:9.2p1-2+deb12u10"), ("libc6", "2.36-9+deb12u14"))


def layered(settings: Settings, name: str, base: str) -> None:
    """A layered appliance next to ``base`` (the shared template), as a community maintainer would add it."""
    src = settings.templates_dir / base
    dst = settings.templates_dir / name
    dst.mkdir()
    data = yaml.safe_load((src / "appliance.yaml").read_text())
    data.update(name=name, base={"appliance": base}, provisioners=["seal.sh"])
    (dst / "appliance.yaml").write_text(yaml.safe_dump(data))


def digests(values: Mapping[str, str]) -> InputsOf:
    """The build's inputs digest per appliance, as the build would compute it now."""

    def inputs_of(a: Appliance) -> tuple[str, Mapping[str, str]]:
        return values[a.name], {"template": values[a.name]}

    return inputs_of


def test_never_built_and_up_to_date(project: Settings, mirror: Mirror, tmp_path: Path) -> None:
    archive = ArchiveIndex(tmp_path / "cache")
    apps = select(project, None)
    plan = make_plan(project, apps, digests({"debian-12": DIGEST_A}), archive, NOW)
    assert [(d.appliance, d.rebuild, d.reasons) for d in plan.decisions] == [("debian-12", True, [Reason.NEVER_BUILT])]
    save(project, manifest("debian-12", "2026.11.20", packages=CURRENT, sources=mirror.sources()))
    d = make_plan(project, apps, digests({"debian-12": DIGEST_A}), archive, NOW).decisions[0]
    assert not d.rebuild and d.last_version == "2026.11.20"
    assert "inputs unchanged" in d.why() and "all 3 packages current" in d.why() and "2 days old" in d.why()


def test_each_reason(project: Settings, mirror: Mirror, tmp_path: Path) -> None:
    archive = ArchiveIndex(tmp_path / "cache")
    apps = select(project, ["debian-12"])
    stale = (("openssl", "3.0.20-1~deb12u2"), ("curl", "7.88.1-10+deb12u14"), ("libc6", "2.36-9+deb12u14"))
    save(project, manifest("debian-12", "2026.11.20", packages=stale, sources=mirror.sources()))
    save(project, manifest("debian-12", "2026.9.1", created="2026-09-01T00:00:00Z", sources=mirror.sources()))
    d = make_plan(project, apps, digests({"debian-12": DIGEST_B}), archive, NOW).decisions[0]
    assert d.last_version == "2026.11.20"  # the newest version is judged, by version order
    assert d.reasons == [Reason.INPUTS_CHANGED, Reason.SECURITY_UPDATES, Reason.PACKAGE_UPDATES]
    why = d.why()
    assert "inputs digest aaaaaaaaaaaa -> bbbbbbbbbbbb (template)" in why
    assert "security-updates: 1 newer: openssl 3.0.20-1~deb12u2 -> 3.0.22-1~deb12u2 (bookworm-security)" in why
    assert "package-updates: 1 newer: curl 7.88.1-10+deb12u14 -> 7.88.1-10+deb12u15 (bookworm)" in why

    save(project, manifest("debian-12", "2026.11.20.1", created="2026-10-01T00:00:00Z", packages=CURRENT))
    d = make_plan(project, apps, digests({"debian-12": DIGEST_A}), archive, NOW).decisions[0]
    assert d.reasons == [Reason.TOO_OLD] and "2026.11.20.1 is 52 days old (max 30)" in d.why()
    assert "no apt sources" in " ".join(str(f) for f in d.findings)


def test_package_check_failure_is_reported_not_fatal(project: Settings, tmp_path: Path) -> None:
    dead = ("deb http://127.0.0.1:9/debian bookworm main",)
    save(project, manifest("debian-12", "2026.11.21", packages=CURRENT, sources=dead))
    d = make_plan(project, select(project, None), digests({"debian-12": DIGEST_A}), ArchiveIndex(tmp_path), NOW)
    assert not d.decisions[0].rebuild
    assert "unchecked: package check failed: http://127.0.0.1:9/debian" in d.decisions[0].why()


def test_layered_appliances_follow_their_base(project: Settings, mirror: Mirror, tmp_path: Path) -> None:
    # names chosen so that alphabetical order would be wrong: a-science is layered on debian-12,
    # and z-gpu on a-science
    layered(project, "a-science", "debian-12")
    layered(project, "z-gpu", "a-science")
    layered(project, "b-other", "debian-12")
    archive = ArchiveIndex(tmp_path / "cache")
    apps = select(project, None)
    now_digests = digests({"debian-12": DIGEST_A, "a-science": DIGEST_A, "z-gpu": DIGEST_A, "b-other": DIGEST_A})
    src = mirror.sources()
    save(project, manifest("debian-12", "2026.11.21", packages=CURRENT, sources=src))
    on = BaseRef("appliance", "debian-12@2026.11.21", "1" * 64, src)
    save(project, manifest("a-science", "2026.11.21", packages=CURRENT, base=on))
    save(project, manifest("b-other", "2026.11.21", packages=CURRENT, base=on))
    on_science = BaseRef("appliance", "a-science@2026.11.21", "2" * 64, src)
    save(project, manifest("z-gpu", "2026.11.21", packages=CURRENT, base=on_science))

    plan = make_plan(project, apps, now_digests, archive, NOW)
    order = [d.appliance for d in plan.decisions]
    assert order == ["debian-12", "a-science", "b-other", "z-gpu"]  # each after its base, else by name
    assert plan.to_rebuild == []

    # the base gets a newer version (built elsewhere, e.g. by hand): its dependants follow
    save(project, manifest("debian-12", "2026.11.22", packages=CURRENT, sources=src))
    plan = make_plan(project, apps, now_digests, archive, NOW)
    assert plan.to_rebuild == ["a-science", "b-other", "z-gpu"]
    science = plan.decisions[1]
    assert science.reasons == [Reason.BASE_UPDATED]
    assert "base debian-12 2026.11.22 is newer than 2026.11.21" in science.why()
    # z-gpu's own base (a-science) is rebuilt first in this run
    assert plan.decisions[3].reasons == [Reason.BASE_REBUILDING]

    # all rebuilt on the new base; then only the base's inputs change: it goes first, the rest follow
    on_new = BaseRef("appliance", "debian-12@2026.11.22", "3" * 64, src)
    save(project, manifest("a-science", "2026.11.22", packages=CURRENT, base=on_new))
    save(project, manifest("b-other", "2026.11.22", packages=CURRENT, base=on_new))
    on_science_new = BaseRef("appliance", "a-science@2026.11.22", "4" * 64, src)
    save(project, manifest("z-gpu", "2026.11.22", packages=CURRENT, base=on_science_new))
    assert make_plan(project, apps, now_digests, archive, NOW).to_rebuild == []
    changed = digests({"debian-12": DIGEST_B, "a-science": DIGEST_A, "z-gpu": DIGEST_A, "b-other": DIGEST_A})
    plan = make_plan(project, apps, changed, archive, NOW)
    assert [(d.appliance, d.reasons) for d in plan.decisions] == [
        ("debian-12", [Reason.INPUTS_CHANGED]),
        ("a-science", [Reason.BASE_REBUILDING]),
        ("b-other", [Reason.BASE_REBUILDING]),
        ("z-gpu", [Reason.BASE_REBUILDING]),
    ]
    # --appliance limits the plan; the order still follows the layering
    plan = make_plan(project, select(project, ["z-gpu", "a-science"]), changed, archive, NOW)
    assert [d.appliance for d in plan.decisions] == ["a-science", "z-gpu"] and plan.to_rebuild == []


def test_unknown_appliance_is_named(project: Settings) -> None:
    with pytest.raises(ConfigError) as e:
        select(project, ["debian-12", "nope"])
    assert e.value.problems == [f"--appliance nope: no appliance named 'nope' under {project.templates_dir}"]
    assert e.value.hint == "known appliances: debian-12"


def test_unreadable_manifest_means_rebuild(project: Settings, tmp_path: Path) -> None:
    d = project.version_dir("debian-12", "2026.11.21")
    d.mkdir(parents=True)
    (d / "manifest.json").write_text("{not json")
    plan = make_plan(project, select(project, None), digests({"debian-12": DIGEST_A}), None, NOW)
    assert plan.to_rebuild == ["debian-12"]
    assert "manifest.json:1:2: not valid JSON" in plan.decisions[0].why()
