"""``invoke new-appliance NAME --from BASE``: a layered community appliance that validates at once.

The new appliance starts from BASE's newest built version (``base.appliance``), so the community
maintainer only writes what is theirs: one provisioner script, run between BASE's first provisioner
(by convention the update step: BASE may be days old) and its last (the sealing step). The Packer template is the
shared one (``packer_templates/_shared/``, every appliance's), or BASE's own if it names one; hardware, OS and rebuild
policy are BASE's too, and auto-endorsement starts off until a VO manager has seen the appliance.
"""

from __future__ import annotations

import json
import re
import shutil

from pipeline.appliance import DEFINITION_FILE, Appliance, find_appliance, load_appliance
from pipeline.errors import ConfigError
from pipeline.settings import Settings

NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")

DEFINITION = """\
# {name}: a community appliance layered on {base} (made by `invoke new-appliance`).
# Reference: docs/adding-an-appliance.md. Check with `invoke validate`, build with
# `invoke build --appliance {name}`.
name: {name}
title: {title}
description: >
  {name}, built on {base_title}. Describe here what it adds and who it is for:
  VO managers read this before they endorse it.
maintainer:
  name: {maintainer_name}
  email: {maintainer_email}
os:
  family: {os_family}
  name: {os_name}
  version: "{os_version}"{codename}
arch: {arch}
firmware: {firmware}  # the base's disk layout (bios: MBR; uefi/hybrid: GPT + ESP); new baselines use hybrid
base:
  appliance: {base}  # built from {base}'s newest version; a new {base} version triggers a rebuild
hardware:
  cores_min: {cores_min}
  cores_recommended: {cores_recommended}
  ram_min_mb: {ram_min_mb}
  ram_recommended_mb: {ram_recommended_mb}
  disk_gb: {disk_gb}
{template}# The base's update step first (the base may be days old), then yours; the base's sealing step
# last (it removes the build user, keys, logs...).
provisioners: [{provisioners}]
# VOs that may endorse this appliance, e.g. [vo.example.org]
vos: [{vos}]
rebuild:
  max_age_days: {max_age_days}
  keep_versions: {keep_versions}
  expires_days: {expires_days}
  auto_endorse: false  # set to true once your VO managers agree to scheduled re-endorsement
"""

PROVISIONER = """\
#!/bin/sh
# {name}: what this appliance adds to {base}. Runs as root inside the build VM, after {base}'s
# own set-up and before the image is sealed. Keep it idempotent; fail loudly (set -eu).
set -eu
export DEBIAN_FRONTEND=noninteractive

# Install your software, e.g.:
#   apt-get update -q && apt-get install -y -q --no-install-recommends python3-numpy
#   rm -rf /var/lib/apt/lists/*

# Record what this appliance is (shown to users inside the VM).
install -d -m 0755 /etc/{name}
printf '%s\\n' "{name} (layered on {base})" > /etc/{name}/release
"""


def scaffold_appliance(settings: Settings, name: str, base: str = "debian-13") -> str:
    """Create ``packer_templates/NAME/`` layered on ``base``; returns what was made and what to do next."""
    if not NAME.match(name):
        raise ConfigError(
            f"new-appliance: name {name!r}: must match {NAME.pattern}",
            hint="lower-case letters, digits, '.' and '-', e.g. debian-13-science",
        )
    target = settings.templates_dir / name
    if target.exists():
        raise ConfigError(f"{target}: already exists", hint="choose another name or edit that appliance")
    parent = find_appliance(settings.templates_dir, base, settings.provisioners_dir)
    files = _files(parent, name)
    staging = settings.templates_dir / f".{name}.new"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for rel, text in files.items():
            (staging / rel).write_text(text)
        (staging / f"{name}.sh").chmod(0o755)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        load_appliance(target, settings.provisioners_dir)
    except ConfigError:
        shutil.rmtree(target, ignore_errors=True)
        raise
    made = "\n".join(f"  {(target / rel).relative_to(settings.root)}" for rel in sorted(files))
    return (
        f"created appliance {name}, layered on {base}:\n{made}\n"
        f"next: edit {name}.sh (what your appliance adds) and the description, then\n"
        f"  invoke validate\n"
        f"  invoke build --appliance {base}    # if {base} has no built version yet\n"
        f"  invoke build --appliance {name}"
    )


def _files(parent: Appliance, name: str) -> dict[str, str]:
    # the base's first provisioner brings the packages up to date, its last one seals the image
    upgrade = _reference(parent, parent.provisioners[:1] if len(parent.provisioners) > 1 else ())
    sealer = _reference(parent, parent.provisioners[-1:])
    codename = f"\n  codename: {parent.os.codename}" if parent.os.codename else ""
    # the base's image labels (Glance os_distro, the login user) carry over: same OS, same cloud user
    codename += f"\n  distro: {parent.os.distro}" if parent.os.distro else ""
    codename += f"\n  admin_user: {parent.os.admin_user}" if parent.os.admin_user else ""
    definition = DEFINITION.format(
        name=name,
        base=parent.name,
        title=json.dumps(f"{name} (on {parent.title})"[:200]),
        base_title=parent.title,
        maintainer_name=json.dumps(parent.maintainer.name),
        maintainer_email=json.dumps(parent.maintainer.email),
        os_family=parent.os.family.value,
        os_name=json.dumps(parent.os.name),
        os_version=parent.os.version,
        codename=codename,
        arch=parent.arch.value,
        firmware=parent.firmware.value,
        cores_min=parent.hardware.cores_min,
        cores_recommended=parent.hardware.cores_recommended,
        ram_min_mb=parent.hardware.ram_min_mb,
        ram_recommended_mb=parent.hardware.ram_recommended_mb,
        disk_gb=parent.hardware.disk_gb,
        provisioners=", ".join([*upgrade, f"{name}.sh", *sealer]),
        vos=", ".join(parent.vos),
        max_age_days=parent.rebuild.max_age_days,
        keep_versions=parent.rebuild.keep_versions,
        expires_days=parent.rebuild.expires_days,
        # the shared template needs no line; only a base with a template of its own passes a copy on
        template=f"template: {name}.pkr.hcl\n" if parent.template else "",
    )
    files = {DEFINITION_FILE: definition, f"{name}.sh": PROVISIONER.format(name=name, base=parent.name)}
    if parent.template:
        header = f"# {name}: layered on {parent.name}; a copy of {parent.name}'s own template ({parent.template}).\n"
        files[f"{name}.pkr.hcl"] = header + parent.template_path.read_text()
    return files


def _reference(parent: Appliance, provisioners: tuple[str, ...]) -> list[str]:
    """How the new appliance names the base's provisioners: the base folder's own copy, else shared."""
    return [
        p if p.startswith("../") else f"../{parent.name}/{p}" if (parent.directory / p).is_file() else p
        for p in provisioners
    ]
