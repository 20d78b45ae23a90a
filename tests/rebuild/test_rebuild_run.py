"""`invoke rebuild` with the real stages: a failure stops only its appliance, dependants are blocked,
the others are decided and skipped, the table and the exit code say so. Plus the end-to-end run."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from pipeline.appliance import build_order, load_all
from pipeline.manifest import Artifact, BaseRef
from pipeline.rebuild import rebuild_appliances
from pipeline.rebuild.decide import Reason
from pipeline.rebuild.execute import Outcome
from pipeline.rebuild.inputs import current_inputs
from pipeline.rebuild.scaffold import scaffold_appliance
from pipeline.settings import Settings

from .conftest import ROOT, Mirror, manifest, save

CURRENT = (("openssl", "3.0.22-1~deb12u2"), ("libc6", "2.36-9+deb12u14"))
VERSION = "2026.11.21"


def as_built(settings: Settings, name: str, sources: tuple[str, ...], base: str | None = None) -> None:
    """A newest version whose manifest has the inputs digest a build would have now (nothing changed).

    Its build disk is recorded but not on disk: anything that needs the disk itself fails for real.
    """
    apps = load_all(settings.templates_dir, settings.provisioners_dir)
    digest, components = current_inputs(settings)(apps[name])
    ref = BaseRef("appliance", f"{base}@{VERSION}", "sha256:" + "1" * 64, sources) if base else None
    m = manifest(name, VERSION, created=f"{VERSION.replace('.', '-')}T10:00:00Z", packages=CURRENT, sources=sources)
    disk = Artifact(f"build/{name}-{VERSION}.qcow2", "build-disk", "qcow2", 1, "2" * 64, "3" * 128)
    save(
        settings,
        dataclasses.replace(m, inputs_digest=digest, inputs=dict(components), base=ref or m.base, artifacts=(disk,)),
    )


def test_failure_blocks_dependants_only(project: Settings, mirror: Mirror) -> None:
    settings = project
    src = mirror.sources()
    as_built(settings, "debian-12", src)
    for name in ("lay-a", "lay-c"):
        scaffold_appliance(settings, name, "debian-12")
    scaffold_appliance(settings, "lay-b", "lay-a")
    as_built(settings, "lay-c", src, base="debian-12")

    report = rebuild_appliances(settings, None, now=datetime(2026, 11, 22, 12, tzinfo=UTC))

    by = {r.decision.appliance: r for r in report.results}
    assert [r.decision.appliance for r in report.results] == [
        a.name for a in build_order(load_all(settings.templates_dir, settings.provisioners_dir).values())
    ]
    assert by["debian-12"].outcome is Outcome.SKIPPED and by["lay-c"].outcome is Outcome.SKIPPED
    assert "inputs unchanged" in by["lay-c"].decision.why() and "base debian-12@2026.11.21 is the newest" in (
        by["lay-c"].decision.why()
    )
    # lay-a is built for real: its base's disk is missing, so the build's base step fails
    assert by["lay-a"].decision.reasons == [Reason.NEVER_BUILT]
    assert by["lay-a"].outcome is Outcome.FAILED and by["lay-a"].steps == []
    assert by["lay-a"].detail.startswith("build failed: build step 'base' failed:")
    assert not (settings.output_dir / "lay-a").exists() or not any((settings.output_dir / "lay-a").iterdir())
    # lay-b is layered on lay-a: decided (its base is rebuilt first) and then blocked
    assert by["lay-b"].decision.reasons == [Reason.BASE_REBUILDING]
    assert by["lay-b"].outcome is Outcome.BLOCKED and by["lay-b"].detail == "not rebuilt: base lay-a failed"
    assert not report.ok
    table = report.summary()
    assert "lay-b      rebuild   blocked" in table and table.splitlines()[-1].startswith("FAILED: ")


def test_cli_exit_codes_and_dry_run(project: Settings, tmp_path: Path) -> None:
    """The task the way a user and the CI run it: exit 0 for a clean dry run, 1 when an appliance failed."""
    env = {
        "VMI_OUTPUT_DIR": str(project.output_dir),
        "VMI_CACHE_DIR": str(project.cache_dir),
        "VMI_WORK_DIR": str(project.work_dir),
        "VMI_CATALOGUE": f"sqlite:///{tmp_path / 'c.db'}",
        "VMI_REPOSITORY": f"file://{tmp_path / 'repo'}",
        "PATH": "/usr/bin:/bin",
    }

    def invoke(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, check=False)  # fmt: skip

    # the checkout's own appliances are decided: ubuntu and alma have never been built here
    dry = invoke("rebuild", "--dry-run", "--appliance", "almalinux-9", "--appliance", "ubuntu-24.04")
    assert dry.returncode == 0, dry.stderr
    assert "almalinux-9   rebuild   planned" in dry.stdout and "dry run: nothing was built or changed" in dry.stdout
    assert not (tmp_path / "c.db").exists()  # a dry run creates no catalogue
    bad = invoke("rebuild", "--appliance", "no-such")
    assert bad.returncode == 2 and "--appliance no-such: no appliance named 'no-such'" in bad.stderr
