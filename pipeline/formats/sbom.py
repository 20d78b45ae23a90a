"""CycloneDX SBOM of a built version: every installed package, and the image files as the top component.

Pure: ``sbom_json`` takes a build manifest and returns bytes (``pipeline.package.write_sbom`` writes
them next to the images). Generated with cyclonedx-python-lib (never hand-built JSON) as CycloneDX 1.6 JSON.
Deterministic: the serial number is derived from the version's inputs and the timestamp is the
build's, so the same manifest gives the same bytes (and the same digest in SHA256SUMS and the registry).
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Mapping, Sequence

from cyclonedx.contrib.license.factories import LicenseFactory
from cyclonedx.model import HashAlgorithm, HashType, Property
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.license import DisjunctiveLicense, LicenseExpression
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL

from pipeline.manifest import Artifact, BuildManifest

MEDIA_TYPE = "application/vnd.cyclonedx+json"
IMAGE_ROLES = ("qcow2", "ova", "raw")  # the files a site downloads; the first present gives the top hashes
_NAMESPACE = uuid.UUID("6f0b2c1e-5d1a-4f4e-9a55-2b9d3c0e7a10")  # fixed: serial numbers are uuid5 under it
SOURCE_PROPERTY = "vmi-pipeline:deb:source"  # the Debian source package (CycloneDX has no field for it)


def sbom_file_name(manifest: BuildManifest) -> str:
    return f"{manifest.appliance}-{manifest.version}.cdx.json"


def distro_id(manifest: BuildManifest) -> str:
    """The purl ``distro`` qualifier, e.g. ``debian-12`` (name and version from the build's os-release)."""
    name = manifest.os.get("name", "").lower().split()[0] if manifest.os.get("name") else "unknown"
    return f"{name}-{manifest.os.get('version', '')}".rstrip("-")


def package_purl(manifest: BuildManifest, name: str, version: str, arch: str) -> PackageURL:
    namespace = distro_id(manifest).split("-")[0]
    return PackageURL(
        type="deb",
        namespace=namespace,
        name=name,
        version=version,
        qualifiers={"arch": arch, "distro": distro_id(manifest)},
    )


_DEB_TO_SPDX = {
    "expat": "MIT",
    "mit": "MIT",
    "apache-2.0": "Apache-2.0",
    "isc": "ISC",
    "zlib": "Zlib",
    "bsl-1.0": "BSL-1.0",
    "curl": "curl",
    "bsd-2-clause": "BSD-2-Clause",
    "bsd-3-clause": "BSD-3-Clause",
    "artistic": "Artistic-1.0",
    "mpl-2.0": "MPL-2.0",
    "openssl": "OpenSSL",
}
_GNU = re.compile(r"^(A?GPL|LGPL|GFDL)-?v?([0-9](?:\.[0-9])?)(\+?)$", re.IGNORECASE)


def spdx_from_debian(name: str) -> str | None:
    """The SPDX id of a Debian copyright-format short name (``GPL-2+`` -> ``GPL-2.0-or-later``), if known."""
    gnu = _GNU.match(name.strip())
    if gnu:
        family, number, plus = gnu.group(1).upper(), gnu.group(2), gnu.group(3)
        number = number if "." in number else f"{number}.0"
        return f"{family}-{number}-{'or-later' if plus else 'only'}"
    return _DEB_TO_SPDX.get(name.strip().lower())


def debian_licenses(copyright_text: str, limit: int = 64) -> tuple[str, ...]:
    """The licences a machine-readable (DEP-5) ``/usr/share/doc/<pkg>/copyright`` declares, as SPDX ids
    or expressions where every part is known, else the Debian name; () for a free-form file.

    Reads ``License:`` fields only (the first line of each); at most ``limit`` distinct results."""
    lines = copyright_text.splitlines()
    if not lines or not lines[0].lower().startswith("format:") or "copyright-format" not in lines[0]:
        return ()
    found: dict[str, None] = {}
    for line in lines:
        if not line.lower().startswith("license:"):
            continue
        value = " ".join(line.split(":", 1)[1].split())
        if not value:
            continue
        parts = re.split(r"\s+(or|and)\s+", value, flags=re.IGNORECASE)
        names, ops = parts[0::2], [p.upper() for p in parts[1::2]]
        spdx = [spdx_from_debian(n) for n in names]
        if all(spdx) and "," not in value:  # a comma regroups ("A or B, and C"): kept as Debian wrote it
            ids = [str(x) for x in spdx]
            value = ids[0] + "".join(f" {op} {i}" for op, i in zip(ops, ids[1:], strict=True))
        found.setdefault(value[:200])
        if len(found) >= limit:
            break
    return tuple(sorted(found))


def build_sbom(manifest: BuildManifest, licenses: Mapping[str, Sequence[str]] | None = None) -> Bom:
    """The BOM object; ``licenses`` maps a package name to what its copyright file declares (SPDX ids
    or free names), where that is known; by default what the build recorded in the manifest."""
    if licenses is None:
        licenses = {p.name: p.licenses for p in manifest.packages if p.licenses}
    factory = LicenseFactory()
    components = []
    for p in sorted(manifest.packages, key=lambda p: (p.name, p.arch, p.version)):
        purl = package_purl(manifest, p.name, p.version, p.arch)
        components.append(
            Component(
                type=ComponentType.LIBRARY,
                name=p.name,
                version=p.version,
                purl=purl,
                bom_ref=purl.to_string(),
                licenses=_licenses(factory, licenses.get(p.name, ())),
                properties=[Property(name=SOURCE_PROPERTY, value=p.source)] if p.source else None,
            )
        )
    images = sorted((a for a in manifest.artifacts if a.role in IMAGE_ROLES), key=lambda a: IMAGE_ROLES.index(a.role))
    top = Component(
        type=ComponentType.OPERATING_SYSTEM,
        name=manifest.appliance,
        version=manifest.version,
        bom_ref=f"vmi:{manifest.appliance}@{manifest.version}",
        description=f"{manifest.os.get('name', '')} {manifest.os.get('version', '')} image, {manifest.arch}".strip(),
        hashes=_hashes(images[0]) if images else None,
        components=[_file_component(a) for a in images],
        properties=[
            Property(name="vmi-pipeline:inputs-digest", value=manifest.inputs_digest),
            *([Property(name="vmi-pipeline:git-commit", value=manifest.git_commit)] if manifest.git_commit else []),
        ],
    )
    created = dt.datetime.strptime(manifest.created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    bom = Bom(
        serial_number=uuid.uuid5(_NAMESPACE, f"{manifest.appliance}/{manifest.version}/{manifest.inputs_digest}"),
        metadata=BomMetaData(component=top, timestamp=created),
        components=components,
    )
    for c in components:
        bom.register_dependency(top, [c])
    return bom


def _licenses(factory: LicenseFactory, values: Sequence[str]) -> list[LicenseExpression | DisjunctiveLicense]:
    """One SPDX expression alone, or a list of ids and names (CycloneDX allows no mix): with several
    licences an expression is kept as a named licence, its text unchanged."""
    made = [factory.make_from_string(v) for v in values]
    if len(made) <= 1:
        return made
    return [DisjunctiveLicense(name=m.value) if isinstance(m, LicenseExpression) else m for m in made]


def _hashes(a: Artifact) -> list[HashType]:
    return [
        HashType(alg=HashAlgorithm.SHA_256, content=a.sha256),
        HashType(alg=HashAlgorithm.SHA_512, content=a.sha512),
    ]


def _file_component(a: Artifact) -> Component:
    return Component(type=ComponentType.FILE, name=a.name, bom_ref=f"file:{a.name}", hashes=_hashes(a))


def sbom_json(manifest: BuildManifest, licenses: Mapping[str, Sequence[str]] | None = None) -> bytes:
    """The SBOM as CycloneDX 1.6 JSON bytes (indented, sorted keys, trailing newline)."""
    text = JsonV1Dot6(build_sbom(manifest, licenses)).output_as_string(indent=2, sort_keys=True)
    return text.encode() + b"\n"
