"""`invoke diff`: package changes with changelog entries read from a real disk image, audit and inputs."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.diff import diff_versions
from pipeline.formats.versiondiff import Kind, package_changes, parse_changelog
from pipeline.fsutil import hash_file
from pipeline.manifest import Artifact, BaseRef, BuildManifest, InstalledPackage
from pipeline.settings import Settings, load_settings
from tests.endorse.disks import make_disk

ROOT = Path(__file__).resolve().parents[1]

OPENSSL_CHANGELOG = """\
openssl (3.0.17-1~deb12u2) bookworm-security; urgency=medium

  * Fix CVE-2025-9230 (out-of-bounds read in CMS) and CVE-2025-9232.

 -- Debian Security Team <team@security.debian.org>  Tue, 30 Sep 2025 10:00:00 +0000

openssl (3.0.17-1~deb12u1) bookworm; urgency=medium

  * New upstream version.
  * Fixes CVE-2025-4575.

 -- Sebastian Andrzej Siewior <sebastian@breakpoint.cc>  Sat, 05 Jul 2025 12:00:00 +0200

openssl (3.0.16-1~deb12u1) bookworm; urgency=medium

  * New upstream version; CVE-2024-13176.

 -- Sebastian Andrzej Siewior <sebastian@breakpoint.cc>  Fri, 14 Feb 2025 12:00:00 +0200

openssl (3.0.15-1~deb12u1) bookworm; urgency=medium

  * Older entry, already in the old image.

 -- Sebastian Andrzej Siewior <sebastian@breakpoint.cc>  Fri, 14 Nov 2024 12:00:00 +0200
"""
TZDATA_CHANGELOG = """\
tzdata (2025b-0+deb12u1) bookworm; urgency=medium

  * New upstream release.

 -- Benjamin Drung <bdrung@debian.org>  Mon, 24 Mar 2025 12:00:00 +0100

tzdata (2024a-0+deb12u1) bookworm; urgency=medium

  * Old.

 -- Benjamin Drung <bdrung@debian.org>  Mon, 24 Mar 2024 12:00:00 +0100
"""

OLD = [("openssl", "3.0.15-1~deb12u1", "amd64"), ("libssl3", "3.0.15-1~deb12u1", "amd64"),
       ("tzdata", "2024a-0+deb12u1", "all"), ("gone", "1.0-1", "amd64"), ("curl", "7.88.1-10+deb12u8", "amd64"),
       ("same", "1:2.0-1", "amd64")]  # fmt: skip
NEW = [("openssl", "3.0.17-1~deb12u2", "amd64"), ("libssl3", "3.0.17-1~deb12u2", "amd64"),
       ("tzdata", "2025b-0+deb12u1", "all"), ("fresh", "2.0-1", "all"), ("curl", "7.88.1-10+deb12u7", "amd64"),
       ("same", "1:2.0-1", "amd64")]  # fmt: skip


def test_package_changes_follow_debian_ordering() -> None:
    changes = {p.name: p for p in package_changes(OLD, NEW)}
    assert {n: p.kind for n, p in changes.items()} == {
        "openssl": Kind.UPGRADED,
        "libssl3": Kind.UPGRADED,
        "tzdata": Kind.UPGRADED,
        "gone": Kind.REMOVED,
        "fresh": Kind.ADDED,
        "curl": Kind.DOWNGRADED,
    }
    epoch = package_changes([("x", "1:1.0", "all")], [("x", "2.0", "all")])
    assert epoch[0].kind is Kind.DOWNGRADED  # the epoch wins over the bigger upstream number
    tilde = package_changes([("x", "1.0~rc1", "all")], [("x", "1.0", "all")])
    assert tilde[0].kind is Kind.UPGRADED


def test_changelog_entries_between_two_versions_with_cves() -> None:
    entries = parse_changelog(OPENSSL_CHANGELOG, "3.0.15-1~deb12u1")
    assert [e.version for e in entries] == ["3.0.17-1~deb12u2", "3.0.17-1~deb12u1", "3.0.16-1~deb12u1"]
    assert entries[0].distribution == "bookworm-security" and entries[0].security
    assert entries[0].cves == ("CVE-2025-9230", "CVE-2025-9232")
    assert not entries[1].security and entries[1].cves == ("CVE-2025-4575",)
    assert "Debian Security Team" not in entries[0].text  # the trailer line is not part of the text
    assert parse_changelog("garbage\nnot a changelog\n", "1.0") == ()
    assert len(parse_changelog(OPENSSL_CHANGELOG, None, limit=2)) == 2


def _settings(tmp_path: Path) -> Settings:
    config = {**yaml.safe_load((ROOT / "invoke.yaml").read_text())["vmi"]}
    config.update(output_dir=str(tmp_path / "output"), work_dir=str(tmp_path / "work"))
    return load_settings(config, ROOT, environ={})


def _version(settings: Settings, version: str, packages: list[tuple[str, str, str]], rootfs: Path | None,
             inputs: dict[str, str], audit: dict[str, str]) -> None:  # fmt: skip
    folder = settings.version_dir("debian-12", version)
    folder.mkdir(parents=True)
    artifacts: tuple[Artifact, ...] = ()
    if rootfs is not None:
        disk = make_disk(rootfs, folder / "build" / f"debian-12-{version}.qcow2")
        artifacts = (Artifact.from_digests(f"build/{disk.name}", "build-disk", "qcow2", hash_file(disk)),)
    manifest = BuildManifest(
        appliance="debian-12", version=version, created="2026-11-22T00:00:00Z", inputs_digest="0" * 64,
        inputs=inputs, git_commit=None, tools={}, accel="tcg",
        os={"family": "linux", "name": "Debian", "version": "12"}, arch="x86_64",
        base=BaseRef("bootstrap", "bookworm", ("1" if rootfs else "0") * 64),
        packages=tuple(InstalledPackage(n, v, a, "openssl" if n == "libssl3" else None) for n, v, a in packages),
        artifacts=artifacts, timings={},
    )  # fmt: skip
    (folder / "manifest.json").write_text(manifest.to_json())
    checks = [{"id": k, "title": k, "result": r, "evidence": []} for k, r in audit.items()]
    (folder / "audit.json").write_text(json.dumps({"checks": checks}))


def _rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    for name, text in (("openssl", OPENSSL_CHANGELOG), ("tzdata", TZDATA_CHANGELOG)):
        doc = root / "usr/share/doc" / name
        doc.mkdir(parents=True)
        (doc / "changelog.Debian.gz").write_bytes(gzip.compress(text.encode()))
    # a doc folder that escapes to a host folder must not be read (this one exists on the host)
    decoy = tmp_path / "host-doc"
    decoy.mkdir()
    (decoy / "changelog.Debian.gz").write_bytes(gzip.compress(b"fresh (2.0-1) unstable; urgency=low\n\n  * x\n"))
    os.symlink(decoy, root / "usr/share/doc/fresh")
    return root


@pytest.fixture
def two_versions(tmp_path: Path) -> Settings:
    settings = _settings(tmp_path)
    base = {"template": "a" * 64, "provisioner:upgrade.sh": "b" * 64}
    _version(settings, "2026.11.22", OLD, None, base, {"ssh-host-keys": "pass", "security-updates": "fail"})
    _version(
        settings, "2026.12.02", NEW, _rootfs(tmp_path), {**base, "provisioner:upgrade.sh": "c" * 64},
        {"ssh-host-keys": "pass", "security-updates": "pass"},
    )  # fmt: skip
    return settings


def test_diff_reads_changelogs_from_the_new_image(two_versions: Settings) -> None:
    found = diff_versions(two_versions, "debian-12", "2026.11.22", "2026.12.02")
    changes = {p.name: p for p in found.packages}
    openssl = changes["openssl"]
    assert [e.version for e in openssl.changelog] == ["3.0.17-1~deb12u2", "3.0.17-1~deb12u1", "3.0.16-1~deb12u1"]
    assert openssl.security and openssl.cves == ("CVE-2024-13176", "CVE-2025-4575", "CVE-2025-9230", "CVE-2025-9232")
    assert changes["libssl3"].changelog == openssl.changelog  # found through its source package
    assert not changes["tzdata"].security and [e.version for e in changes["tzdata"].changelog] == ["2025b-0+deb12u1"]
    assert changes["fresh"].changelog == ()  # its doc folder points outside the image: not followed
    assert [(c.name, c.old, c.new) for c in found.audit] == [("security-updates", "fail", "pass")]
    assert [c.name for c in found.inputs] == ["provisioner:upgrade.sh"]
    assert found.base is not None and (found.base.old, found.base.new) == (
        "bookworm " + "0" * 19,
        "bookworm " + "1" * 19,
    )
    text = found.summary()
    assert "packages: 3 upgraded (2 from the security suite), 1 added, 1 removed, 1 downgraded" in text
    assert "  ^ openssl 3.0.15-1~deb12u1 -> 3.0.17-1~deb12u2 [security] CVE-2024-13176" in text
    assert "      3.0.17-1~deb12u2 (bookworm-security): Fix CVE-2025-9230 (out-of-bounds read in CMS)" in text
    assert "audit changed: security-updates fail -> pass" in text
    assert "inputs changed: provisioner:upgrade.sh" in text


def test_invoke_diff_json(two_versions: Settings, tmp_path: Path) -> None:
    env = {**os.environ, "VMI_OUTPUT_DIR": str(two_versions.output_dir), "VMI_WORK_DIR": str(two_versions.work_dir)}
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "diff", "--appliance", "debian-12", "2026.11.22", "2026.12.02", "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    openssl = next(p for p in data["packages"] if p["name"] == "openssl")
    assert openssl["change"] == "upgraded" and openssl["security"] and "CVE-2025-9230" in openssl["cves"]
    missing = subprocess.run(
        [sys.executable, "-m", "invoke", "diff", "--appliance", "debian-12", "2026.11.22", "2027.01.01"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert missing.returncode == 2
    assert missing.stderr.startswith(
        f"error: {two_versions.output_dir}/debian-12/2027.01.01/manifest.json: no build manifest"
    )


@pytest.mark.slow
@pytest.mark.build
def test_diff_on_the_reference_build(tmp_path: Path) -> None:
    """N+1 = the reference build; N = the same with older versions of packages the image documents."""
    import dataclasses

    from pipeline.manifest import find_version

    output = Path(os.environ.get("VMI_TEST_OUTPUT", str(ROOT / "work" / "test-output")))
    if not list(output.glob("debian-12/*/manifest.json")):
        pytest.skip(f"no reference build in {output} (the lead's build makes it)")
    version_dir, built = find_version(output, "debian-12")
    settings = _settings(tmp_path)
    new_dir = settings.version_dir("debian-12", built.version)
    (new_dir / "build").mkdir(parents=True)
    disk = built.artifact("build-disk")
    os.symlink(version_dir / disk.name, new_dir / disk.name)
    (new_dir / "manifest.json").write_text(built.to_json())
    older = {"base-files": "12.4+deb12u10", "tzdata": "2024a-0+deb12u1"}
    present = {p.name: p.version for p in built.packages}
    assert set(older) <= set(present), "the reference image lost base-files or tzdata"
    packages = tuple(dataclasses.replace(p, version=older.get(p.name, p.version)) for p in built.packages)
    old_dir = settings.version_dir("debian-12", "2026.01.01")
    old_dir.mkdir(parents=True)
    (old_dir / "manifest.json").write_text(
        dataclasses.replace(built, version="2026.01.01", packages=packages).to_json()
    )

    found = diff_versions(settings, "debian-12", "2026.01.01", built.version)
    changes = {p.name: p for p in found.packages}
    assert set(changes) == {"base-files", "tzdata"}
    base_files = changes["base-files"]
    assert base_files.kind is Kind.UPGRADED and base_files.new == present["base-files"]
    assert base_files.changelog and base_files.changelog[0].version == present["base-files"]
    assert base_files.changelog[-1].version == "12.4+deb12u11"  # every entry after the old version, no more
    assert changes["tzdata"].changelog[0].version == present["tzdata"]
    assert "packages: 2 upgraded" in found.summary()
