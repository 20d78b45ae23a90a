"""Appliance definitions: ``packer_templates/<name>/appliance.yaml``, built with the shared Packer
template ``packer_templates/_shared/qemu.pkr.hcl`` (or, rarely, a template of the appliance's own).

Loaded once into frozen dataclasses; every mistake in every file is reported together, each with
its file and field, before anything starts.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import os
import re
import stat
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError
from pipeline.schema import (
    TOP,
    Problem,
    YamlLimits,
    apply_defaults,
    brief,
    join_path,
    load_schema,
    parse_yaml,
    schema_problems,
    text_problems,
)

DEFINITION_FILE = "appliance.yaml"
SCHEMA = "appliance"
# A real definition is ~2 KB with four levels of nesting: these bounds are far above any, and far
# below what hurts (a YAML alias bomb is refused at its first alias, before anything is expanded).
YAML_LIMITS = YamlLimits(max_bytes=64 * 1024, max_depth=8, max_nodes=5000)
MULTILINE_FIELDS = frozenset({"description"})
SIBLING = "../"  # a provisioner path into another appliance's folder: ../NAME/script.sh
# The template every appliance is built with unless it names its own: beside the appliance folders,
# in a folder without appliance.yaml (so it is no appliance) whose name no appliance can take.
SHARED_TEMPLATE = Path("_shared") / "qemu.pkr.hcl"

# The Packer variables the pipeline sets for every build (pipeline.builder.template_variables, README
# "Building an image"): an appliance's ``variables`` may not override them. Not even cpus or memory:
# the build VM's memory follows hardware.ram_min_mb and its CPUs the build host, one place each.
PIPELINE_VARIABLES = frozenset(
    {
        "base_image",
        "output_directory",
        "vm_name",
        "accelerator",
        "cpu_model",
        "machine_type",
        "ssh_timeout",
        "cpus",
        "memory",
        "seed_dir",
        "ssh_username",
        "ssh_private_key_file",
        "scripts",
        "disk_size",
        "skip_resize_disk",
        "machine_qemuargs",
        "package_list",
        "serial_log",
    }
)
_RESERVED_WHY = {
    "memory": "the build VM's memory follows hardware.ram_min_mb",
    "cpus": "the build VM's CPUs follow the build host",
    "disk_size": "the disk size follows hardware.disk_gb",
    "machine_qemuargs": "the QEMU machine follows the accelerator probe and the firmware field",
}
_INTEGER_FIELDS = frozenset(
    {"cores_min", "cores_recommended", "ram_min_mb", "ram_recommended_mb", "disk_gb"}
    | {"max_age_days", "keep_versions", "expires_days"}
)


@functools.cache
def _pattern(*where: str) -> re.Pattern[str]:
    """A pattern of the schema (written once, there), for the checks the schema cannot make."""
    node: Any = load_schema(SCHEMA)
    for key in where:
        node = node[key]
    return re.compile(node["pattern"])


class OsFamily(enum.StrEnum):
    LINUX = "linux"
    WINDOWS = "windows"
    BSD = "bsd"


class Arch(enum.StrEnum):
    X86_64 = "x86_64"
    AARCH64 = "aarch64"


class Firmware(enum.StrEnum):
    """What the disk boots with: BIOS (MBR), UEFI (GPT + ESP) or both (GPT, BIOS boot partition + ESP)."""

    BIOS = "bios"
    UEFI = "uefi"
    HYBRID = "hybrid"

    @property
    def boots_bios(self) -> bool:
        return self is not Firmware.UEFI

    @property
    def boots_uefi(self) -> bool:
        return self is not Firmware.BIOS


class BaseKind(enum.StrEnum):
    BOOTSTRAP = "bootstrap"  # root filesystem made here with mmdebstrap
    IMAGE = "image"  # upstream cloud image URL + checksum
    APPLIANCE = "appliance"  # another appliance's latest output


@dataclass(frozen=True)
class Maintainer:
    name: str
    email: str


@dataclass(frozen=True)
class OsInfo:
    family: OsFamily
    name: str
    version: str
    codename: str | None
    distro: str | None = None  # Glance os_distro; None: from os.name (formats.oci.os_distro)
    admin_user: str | None = None  # the image's default login user


@dataclass(frozen=True)
class OciTags:
    """Tag templates for an OCI registry: the immutable per-version tag and the rolling one ("": none)."""

    tag: str
    rolling_tag: str

    def render(self, appliance: str, os_version: str, arch: str, version: str) -> tuple[str, str | None]:
        """(immutable tag, rolling tag or None) of one version."""
        values = {"name": appliance, "os_version": os_version, "arch": arch, "version": version}
        return self.tag.format_map(values), self.rolling_tag.format_map(values) or None


# An OCI tag (distribution spec), with room for the OVA artifact's "-ova" suffix
OCI_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,123}$")
OVA_TAG_SUFFIX = "-ova"


@dataclass(frozen=True)
class Bootstrap:
    suite: str
    mirror: str
    security_mirror: str
    components: tuple[str, ...]
    packages: tuple[str, ...]


@dataclass(frozen=True)
class UpstreamImage:
    url: str
    checksum: str
    format: str


@dataclass(frozen=True)
class Base:
    kind: BaseKind
    bootstrap: Bootstrap | None = None
    image: UpstreamImage | None = None
    appliance: str | None = None


@dataclass(frozen=True)
class Hardware:
    cores_min: int
    cores_recommended: int
    ram_min_mb: int
    ram_recommended_mb: int
    disk_gb: int


@dataclass(frozen=True)
class RebuildPolicy:
    max_age_days: int
    keep_versions: int
    expires_days: int
    auto_endorse: bool
    schedule: str


@dataclass(frozen=True)
class Appliance:
    """One appliance: what it is, where it starts from, and how it is built."""

    name: str
    title: str
    description: str
    vendor: str
    homepage: str
    maintainer: Maintainer
    os: OsInfo
    arch: Arch
    base: Base
    hardware: Hardware
    firmware: Firmware
    template: str | None  # None: the shared template
    variables: dict[str, str | int | float | bool]
    provisioners: tuple[str, ...]
    vos: tuple[str, ...]
    rebuild: RebuildPolicy
    unattended_upgrades: bool
    directory: Path  # the appliance folder; not part of the definition itself
    oci: OciTags = OciTags("{os_version}-{version}", "{os_version}")

    @property
    def template_path(self) -> Path:
        """The appliance's own template if it names one, else the shared one beside the folders."""
        return self.directory / self.template if self.template else self.directory.parent / SHARED_TEMPLATE

    @property
    def definition_path(self) -> Path:
        return self.directory / DEFINITION_FILE

    def template_problem(self) -> str | None:
        """One line naming the definition if its template (the shared one by default) is not there."""
        if self.template_path.is_file():
            return None
        return f"{self.definition_path}: template: {self.template_path} does not exist"

    def provisioner_paths(self, provisioners_dir: Path) -> list[Path]:
        """Each provisioner script: the appliance folder's own copy first, else ``provisioners/``."""
        return [
            (self.directory / p) if p.startswith(SIBLING) or (self.directory / p).is_file() else (provisioners_dir / p)
            for p in self.provisioners
        ]

    def to_dict(self) -> dict[str, Any]:
        """The definition as it would be written in ``appliance.yaml`` (defaults filled in)."""
        data = dataclasses.asdict(self)
        data.pop("directory")
        base = data["base"]
        kind = BaseKind(base.pop("kind")).value
        data["base"] = {kind: base[kind]}
        plain: dict[str, Any] = _plain(data)
        return plain


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


def from_dict(
    data: dict[str, Any], directory: Path, source: str = "<memory>", provisioners_dir: Path | None = None
) -> Appliance:
    """Validate ``data`` against the schema and the cross-field rules; build the ``Appliance``.

    Raises ``ConfigError`` listing every problem, each ``source: field.path: message``.
    """
    problems = definition_problems(data, directory, provisioners_dir)
    if problems:
        raise ConfigError([f"{source}: {path}: {message}" for path, message in problems])
    d = apply_defaults(SCHEMA, data)
    hw = dict(d["hardware"])
    hw.setdefault("cores_recommended", hw["cores_min"])
    hw.setdefault("ram_recommended_mb", hw["ram_min_mb"])
    base_kind = BaseKind(next(iter(d["base"])))
    raw_base = d["base"][base_kind]
    base = Base(
        kind=base_kind,
        bootstrap=Bootstrap(
            suite=raw_base["suite"],
            mirror=raw_base["mirror"],
            security_mirror=raw_base["security_mirror"],
            components=tuple(raw_base["components"]),
            packages=tuple(raw_base["packages"]),
        )
        if base_kind is BaseKind.BOOTSTRAP
        else None,
        image=UpstreamImage(**raw_base) if base_kind is BaseKind.IMAGE else None,
        appliance=raw_base if base_kind is BaseKind.APPLIANCE else None,
    )
    return Appliance(
        name=d["name"],
        title=d["title"],
        description=d["description"].strip(),
        vendor=d["vendor"],
        homepage=d["homepage"],
        maintainer=Maintainer(**d["maintainer"]),
        os=OsInfo(
            family=OsFamily(d["os"]["family"]),
            name=d["os"]["name"],
            version=d["os"]["version"],
            codename=d["os"].get("codename"),
            distro=d["os"].get("distro"),
            admin_user=d["os"].get("admin_user"),
        ),
        arch=Arch(d["arch"]),
        base=base,
        hardware=Hardware(**hw),
        firmware=Firmware(d["firmware"]),
        template=d.get("template"),
        variables=dict(d["variables"]),
        provisioners=tuple(d["provisioners"]),
        vos=tuple(d["vos"]),
        rebuild=RebuildPolicy(**d["rebuild"]),
        unattended_upgrades=bool(d["unattended_upgrades"]),
        directory=directory,
        oci=OciTags(**d["oci"]),
    )


def definition_problems(data: Any, directory: Path, provisioners_dir: Path | None = None) -> list[Problem]:
    """Every problem of one definition as ``(field path, message)``: unsafe text, the schema, then the
    rules a schema cannot say (names, files that must exist inside their folders, reserved variables).

    Each rule guards its own types, so one wrong field never hides the others.
    """
    if not isinstance(data, dict):
        return [(TOP, "must be a mapping of fields")]
    problems = text_problems(data, MULTILINE_FIELDS)
    problems += schema_problems(SCHEMA, data)
    name = data.get("name")
    if isinstance(name, str) and name != directory.name:
        problems.append(("name", f"{brief(name)} must equal its folder name {brief(directory.name)}"))
    for shown in ("title", "description", "vendor", "maintainer.name", "os.name"):
        if isinstance(value := _get(data, shown), str) and value and not value.strip():
            problems.append((shown, "must not be blank"))
    problems += _number_problems(data)
    problems += _url_problems(data)
    base = data.get("base")
    if isinstance(base, dict) and base.get("appliance") is not None and base.get("appliance") == name:
        problems.append(("base.appliance", "an appliance cannot be layered on itself"))
    template = data.get("template")
    if isinstance(template, str) and _pattern("properties", "template").match(template):
        if why := _file_problem(directory / template, (directory,)):
            problems.append(("template", f"{template} {why}"))
    problems += _variable_problems(data.get("variables"))
    problems += _oci_tag_problems(data)
    problems += _provisioner_problems(data.get("provisioners"), directory, provisioners_dir)
    return problems


def _get(data: Any, dotted: str) -> Any:
    """``data`` at ``a.b``, or None where the document has another shape."""
    for key in dotted.split("."):
        data = data.get(key) if isinstance(data, dict) else None
    return data


def _number_problems(data: dict[str, Any]) -> list[Problem]:
    """Whole numbers written as such (``2.0`` passes JSON Schema's integer) and recommended >= minimum."""
    problems: list[Problem] = []
    for section in ("hardware", "rebuild"):
        values = data.get(section)
        if isinstance(values, dict):
            problems += [
                (f"{section}.{k}", "must be a whole number (no decimal point)")
                for k, v in values.items()
                if isinstance(v, float) and k in _INTEGER_FIELDS
            ]
    hw = data.get("hardware")
    if isinstance(hw, dict):
        for low, high in (("cores_min", "cores_recommended"), ("ram_min_mb", "ram_recommended_mb")):
            if isinstance(hw.get(low), int | float) and isinstance(hw.get(high), int | float) and hw[high] < hw[low]:
                problems.append((f"hardware.{high}", f"must be >= hardware.{low} ({hw[low]})"))
    return problems


def _url_problems(data: dict[str, Any]) -> list[Problem]:
    """Port numbers the URL pattern cannot bound."""
    urls: dict[str, Any] = {"homepage": data.get("homepage")}
    base = data.get("base")
    if isinstance(base, dict):
        for kind, fields in (("bootstrap", ("mirror", "security_mirror")), ("image", ("url",))):
            if isinstance(base.get(kind), dict):
                urls |= {f"base.{kind}.{f}": base[kind].get(f) for f in fields}
    problems: list[Problem] = []
    for path, url in urls.items():
        if isinstance(url, str) and _pattern("$defs", "url").match(url):
            try:
                _ = urllib.parse.urlsplit(url).port  # raises on a port beyond 65535
            except ValueError as e:
                problems.append((path, f"{brief(url)}: {e}"))
    return problems


def _variable_problems(variables: Any) -> list[Problem]:
    if not isinstance(variables, dict):
        return []
    problems: list[Problem] = []
    for key, value in variables.items():
        if key in PIPELINE_VARIABLES:
            why = _RESERVED_WHY.get(key, "the pipeline sets it for every build")
            problems.append((join_path("variables", key), f"is a pipeline variable and cannot be set here ({why})"))
        if isinstance(value, float) and not math.isfinite(value):
            problems.append((join_path("variables", key), "must be a finite number"))
    return problems


def _oci_tag_problems(data: dict[str, Any]) -> list[Problem]:
    """The tag templates, rendered with this definition's values, make valid and distinct OCI tags."""
    oci, os_info = data.get("oci"), data.get("os")
    if not isinstance(oci, dict):
        return []
    problems: list[Problem] = []
    tag, rolling = oci.get("tag", "{os_version}-{version}"), oci.get("rolling_tag", "{os_version}")
    tags = ("properties", "oci", "properties")
    if not (isinstance(tag, str) and _pattern(*tags, "tag").match(tag)):
        return []  # the schema says why
    if not (isinstance(rolling, str) and _pattern(*tags, "rolling_tag").match(rolling)):
        return []
    if "{version}" not in tag:
        problems.append(("oci.tag", f"{brief(tag)} must contain {{version}}: the tag names one version for good"))
    os_version = os_info.get("version") if isinstance(os_info, dict) else None
    name, arch = data.get("name"), data.get("arch", "x86_64")
    if not all(isinstance(v, str) for v in (os_version, name, arch)):
        return problems
    # the longest version a build makes: YYYY.MM.DD plus a same-day counter
    sample = OciTags(tag, rolling).render(str(name), str(os_version), str(arch), "2026.12.02.99")
    for field, value in (("oci.tag", sample[0]), ("oci.rolling_tag", sample[1])):
        if value is not None and not OCI_TAG.match(value):
            why = "not a valid OCI tag (at most 124 characters, not starting with . or -)"
            problems.append((field, f"makes {brief(value)}, {why}"))
    return problems


def _provisioner_problems(provisioners: Any, directory: Path, provisioners_dir: Path | None) -> list[Problem]:
    """Each provisioner is a regular file inside the appliance folders (``packer_templates/``: its
    own, or a sibling's as ``../NAME/x.sh``) or the shared ``provisioners/``, symlinks resolved."""
    if not isinstance(provisioners, list):
        return []
    problems: list[Problem] = []
    roots = (directory.parent,) if provisioners_dir is None else (directory.parent, provisioners_dir)
    for i, name in enumerate(provisioners):
        if not isinstance(name, str) or not _pattern("properties", "provisioners", "items").match(name):
            continue  # the schema says why
        own = directory / name
        if name.startswith(SIBLING) or own.is_file() or own.is_symlink() or provisioners_dir is None:
            if provisioners_dir is None and not own.exists() and not own.is_symlink():
                continue  # checked against provisioners/ when the caller names it
            why = _file_problem(own, roots)
        else:
            why = _file_problem(provisioners_dir / name, roots)
            if why == "does not exist":
                why = f"not found in {directory} or {provisioners_dir}"
        if why:
            problems.append((f"provisioners.{i}", f"{name} {why}"))
    return problems


def _file_problem(path: Path, roots: tuple[Path, ...]) -> str | None:
    """Why ``path`` is not a regular file inside one of ``roots`` (symlinks resolved), or None."""
    if not path.exists():
        return "is a dangling symlink" if path.is_symlink() else "does not exist"
    try:
        real = path.resolve(strict=True)
        inside = any(real.is_relative_to(root.resolve(strict=True)) for root in roots if root.exists())
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop (Python < 3.13)
        return f"cannot be resolved ({e.__class__.__name__})"
    if not inside:
        return f"resolves to {real}, outside {' and '.join(str(r) for r in roots)}"
    if not real.is_file():
        return "is not a regular file"
    return None


def read_definition(path: Path) -> str:
    """The text of ``path``: a regular file of at most ``YAML_LIMITS.max_bytes`` bytes of UTF-8."""
    try:
        with path.open("rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ConfigError(f"{path}: (top level): is not a regular file")
            raw = f.read(YAML_LIMITS.max_bytes + 1)
    except OSError as e:
        raise ConfigError(f"{path}: (top level): cannot be read ({e.strerror or e})") from e
    if len(raw) > YAML_LIMITS.max_bytes:
        raise ConfigError(f"{path}: (top level): larger than {YAML_LIMITS.max_bytes} bytes")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: (top level): not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start})") from e


def load_appliance(directory: Path, provisioners_dir: Path | None = None) -> Appliance:
    """Load ``directory/appliance.yaml``; ``ConfigError`` names the file and field of every mistake."""
    path = directory / DEFINITION_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: no appliance definition here", hint=f"create {DEFINITION_FILE} in {directory}")
    data, problems = parse_yaml(read_definition(path), str(path), YAML_LIMITS)
    if problems:
        # what the YAML reader refused is already said: the rest is checked without repeating it
        refused = {p for p, _ in problems}
        checked = definition_problems(data, directory, provisioners_dir) if isinstance(data, dict) else []
        rest = [(p, m) for p, m in checked if not any(p == r or p.startswith(r + ".") for r in refused)]
        raise ConfigError([f"{path}: {p}: {m}" for p, m in problems + rest])
    return from_dict(data, directory, str(path), provisioners_dir)


def load_all(templates_dir: Path, provisioners_dir: Path | None = None) -> dict[str, Appliance]:
    """Every appliance under ``templates_dir``; problems in all of them are reported together."""
    problems: list[str] = []
    found: dict[str, Appliance] = {}
    for definition in sorted(templates_dir.glob(f"*/{DEFINITION_FILE}")):
        if why := _file_problem(definition, (templates_dir,)):
            problems.append(f"{definition}: (top level): {why}")
            continue
        try:
            a = load_appliance(definition.parent, provisioners_dir)
        except ConfigError as e:
            problems.extend(e.problems)
            continue
        found[a.name] = a
    for a in found.values():
        if a.base.appliance is not None and a.base.appliance not in found:
            problems.append(f"{a.definition_path}: base.appliance: unknown appliance {a.base.appliance!r}")
    try:
        build_order(found.values())
    except ConfigError as e:
        problems.extend(e.problems)
    if problems:
        raise ConfigError(problems)
    return found


def build_order(appliances: Iterable[Appliance]) -> list[Appliance]:
    """Appliances sorted so that each comes after the appliance it is layered on (stable by name).

    Iterative: a chain of a thousand layers is a long list, not a deep recursion.
    """
    by_name = {a.name: a for a in appliances}
    ordered: list[Appliance] = []
    done: set[str] = set()
    for a in sorted(by_name.values(), key=lambda x: x.name):
        chain: list[Appliance] = []
        seen: set[str] = set()
        node: Appliance | None = a
        while node is not None and node.name not in done:
            if node.name in seen:
                names = [c.name for c in chain] + [node.name]
                if len(names) > 7:  # one line, however long the loop
                    names = [*names[:3], f"... ({len(names) - 6} more)", *names[-3:]]
                raise ConfigError(f"{node.definition_path}: base.appliance: layering cycle {' -> '.join(names)}")
            chain.append(node)
            seen.add(node.name)
            node = by_name.get(node.base.appliance or "")
        for layer in reversed(chain):
            ordered.append(layer)
            done.add(layer.name)
    return ordered


def find_appliance(templates_dir: Path, name: str, provisioners_dir: Path | None = None) -> Appliance:
    """The appliance called ``name``, with a hint listing the known ones if there is none."""
    directory = templates_dir / name
    if not _pattern("$defs", "name").match(name) or not (directory / DEFINITION_FILE).is_file():
        known = sorted(p.parent.name for p in templates_dir.glob(f"*/{DEFINITION_FILE}"))
        raise ConfigError(
            f"{templates_dir}: no appliance named {brief(name)}",
            hint="known appliances: " + (", ".join(known) or "none"),
        )
    return load_appliance(directory, provisioners_dir)
