"""Appliance definitions: ``packer_templates/<name>/appliance.yaml`` plus its Packer template.

Loaded once into frozen dataclasses; every mistake in every file is reported together, each with
its file and field, before anything starts.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError
from pipeline.schema import apply_defaults, validation_errors

DEFINITION_FILE = "appliance.yaml"
# libyaml's safe loader when present: 7x faster (the rebuild decision reads every definition)
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
SCHEMA = "appliance"


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
    template: str
    variables: dict[str, str | int | float | bool]
    provisioners: tuple[str, ...]
    vos: tuple[str, ...]
    rebuild: RebuildPolicy
    directory: Path  # the appliance folder; not part of the definition itself

    @property
    def template_path(self) -> Path:
        return self.directory / self.template

    @property
    def definition_path(self) -> Path:
        return self.directory / DEFINITION_FILE

    def provisioner_paths(self, provisioners_dir: Path) -> list[Path]:
        """Each provisioner script: the appliance folder's own copy first, else ``provisioners/``."""
        return [
            (self.directory / p) if (self.directory / p).is_file() else (provisioners_dir / p)
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


def from_dict(data: dict[str, Any], directory: Path, source: str = "<memory>") -> Appliance:
    """Validate ``data`` against the schema and the cross-field rules; build the ``Appliance``.

    Raises ``ConfigError`` listing every problem.
    """
    problems = validation_errors(SCHEMA, data, source)
    if problems:
        raise ConfigError(problems)
    d = apply_defaults(SCHEMA, data)
    hw = dict(d["hardware"])
    hw.setdefault("cores_recommended", hw["cores_min"])
    hw.setdefault("ram_recommended_mb", hw["ram_min_mb"])
    if hw["cores_recommended"] < hw["cores_min"]:
        problems.append(f"{source}: hardware.cores_recommended: must be >= hardware.cores_min ({hw['cores_min']})")
    if hw["ram_recommended_mb"] < hw["ram_min_mb"]:
        problems.append(f"{source}: hardware.ram_recommended_mb: must be >= hardware.ram_min_mb ({hw['ram_min_mb']})")
    if d["name"] != directory.name:
        problems.append(f"{source}: name: {d['name']!r} must equal its folder name {directory.name!r}")
    if not (directory / d["template"]).is_file():
        problems.append(f"{source}: template: {d['template']} does not exist in {directory}")
    base_kind = BaseKind(next(iter(d["base"])))
    if base_kind is BaseKind.APPLIANCE and d["base"]["appliance"] == d["name"]:
        problems.append(f"{source}: base.appliance: an appliance cannot be layered on itself")
    if problems:
        raise ConfigError(problems)
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
        ),
        arch=Arch(d["arch"]),
        base=base,
        hardware=Hardware(**hw),
        firmware=Firmware(d["firmware"]),
        template=d["template"],
        variables=dict(d["variables"]),
        provisioners=tuple(d["provisioners"]),
        vos=tuple(d["vos"]),
        rebuild=RebuildPolicy(**d["rebuild"]),
        directory=directory,
    )


def load_appliance(directory: Path, provisioners_dir: Path | None = None) -> Appliance:
    """Load ``directory/appliance.yaml``; ``ConfigError`` names the file and field of every mistake."""
    path = directory / DEFINITION_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: no appliance definition here", hint=f"create {DEFINITION_FILE} in {directory}")
    try:
        data = yaml.load(path.read_text(), Loader=_YAML_LOADER)  # noqa: S506 - a safe loader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {getattr(e, 'problem', e)}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: (top level): must be a mapping of fields")
    appliance = from_dict(data, directory, str(path))
    if provisioners_dir is not None:
        missing = [
            f"{path}: provisioners[{i}]: {name} not found in {directory} or {provisioners_dir}"
            for i, (name, p) in enumerate(
                zip(appliance.provisioners, appliance.provisioner_paths(provisioners_dir), strict=True)
            )
            if not p.is_file()
        ]
        if missing:
            raise ConfigError(missing)
    return appliance


def load_all(templates_dir: Path, provisioners_dir: Path | None = None) -> dict[str, Appliance]:
    """Every appliance under ``templates_dir``; problems in all of them are reported together."""
    problems: list[str] = []
    found: dict[str, Appliance] = {}
    for definition in sorted(templates_dir.glob(f"*/{DEFINITION_FILE}")):
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
    """Appliances sorted so that each comes after the appliance it is layered on (stable by name)."""
    by_name = {a.name: a for a in appliances}
    ordered: list[Appliance] = []
    state: dict[str, int] = {}  # 1 = visiting, 2 = done

    def visit(a: Appliance, chain: list[str]) -> None:
        if state.get(a.name) == 2:
            return
        if state.get(a.name) == 1:
            cycle = " -> ".join([*chain, a.name])
            raise ConfigError(f"{a.definition_path}: base.appliance: layering cycle {cycle}")
        state[a.name] = 1
        parent = by_name.get(a.base.appliance or "")
        if parent is not None:
            visit(parent, [*chain, a.name])
        state[a.name] = 2
        ordered.append(a)

    for a in sorted(by_name.values(), key=lambda x: x.name):
        visit(a, [])
    return ordered


def find_appliance(templates_dir: Path, name: str, provisioners_dir: Path | None = None) -> Appliance:
    """The appliance called ``name``, with a hint listing the known ones if there is none."""
    directory = templates_dir / name
    if not (directory / DEFINITION_FILE).is_file():
        known = sorted(p.parent.name for p in templates_dir.glob(f"*/{DEFINITION_FILE}"))
        raise ConfigError(
            f"{directory / DEFINITION_FILE}: no appliance named {name!r}",
            hint="known appliances: " + (", ".join(known) or "none"),
        )
    return load_appliance(directory, provisioners_dir)
