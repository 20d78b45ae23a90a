"""Package stage: a built version (or any disk) -> OVA, compressed qcow2, optional raw, checksum files.

Recipe: check the input disk's header; start qemu-img's qcow2 (and raw) conversions in the
background; write the streamOptimized VMDK ourselves (only the data the disk holds, deflated on
every core), then the OVA (descriptor, manifest, optional certificate, disk) hashing as it goes;
then the SHA256SUMS/SHA512SUMS files, and finally the manifest. Every file reaches its final name only
when complete; nothing depends on the clock, so the same disk gives the same OVA bytes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.appliance import Appliance, find_appliance
from pipeline.errors import ArtifactError, ConfigError
from pipeline.formats.ova import Member, certificate_size, manifest_text, sign_manifest, write_tar
from pipeline.formats.ovf import PROFILES, DiskRef, HardwareProfile, build_descriptor, derived_id
from pipeline.formats.sbom import sbom_file_name, sbom_json
from pipeline.formats.vmdk_write import StreamVmdk, VmdkWriteError
from pipeline.fsutil import Digests, atomic_path, hash_file, write_text_atomic
from pipeline.log import log, step
from pipeline.manifest import MANIFEST_FILE, Artifact, BuildManifest, find_version
from pipeline.package import formats
from pipeline.package.images import DiskFormat, inspect_disk
from pipeline.package.ova import ParallelHashingWriter, load_signer
from pipeline.settings import Settings

if TYPE_CHECKING:  # `invoke package` need not import the build stage
    from pipeline.builder import BuildResult

__all__ = ["PackageResult", "package_appliance", "package_build", "package_ova"]

BUILD_ROLES = ("build-disk", "log")  # what the build stage records; everything else is the package's
PUBLISHED_MODE = 0o644  # outputs are meant to be downloaded; the temp files they start as are 0600


@dataclass(frozen=True)
class PackageResult:
    appliance: str
    version: str
    out_dir: Path
    artifacts: tuple[Artifact, ...]
    manifest_path: Path | None
    timings: dict[str, float]
    definition: Appliance  # the parsed appliance.yaml, handed on to publish
    manifest: BuildManifest | None = None  # a built version's manifest, package artifacts included
    reused: bool = False  # packaged by an earlier run, found complete on disk

    @classmethod
    def of_build(cls, definition: Appliance, version_dir: Path, manifest: BuildManifest) -> PackageResult:
        """A built version whose manifest records its packages already (nothing is checked here:
        publish proves every file before it sends one)."""
        packaged = tuple(a for a in manifest.artifacts if a.role not in BUILD_ROLES)
        path = version_dir / MANIFEST_FILE
        return cls(definition.name, manifest.version, version_dir, packaged, path, {}, definition, manifest, True)

    @classmethod
    def load(cls, settings: Settings, definition: Appliance, version: str | None = None) -> PackageResult:
        """A packaged version as it is on disk (default: the newest): where a stopped recipe resumes."""
        version_dir, manifest = find_version(settings.output_dir, definition.name, version)
        return cls.of_build(definition, version_dir, manifest)

    def summary(self) -> str:
        if self.reused:
            return f"{self.appliance} {self.version} is already packaged in {self.out_dir}"
        lines = [f"packaged {self.appliance} {self.version} in {self.out_dir}"]
        for a in self.artifacts:
            lines.append(f"  {a.name:<40} {a.size:>14,} bytes  sha256 {a.sha256}")
        if self.manifest_path is not None:
            lines.append(f"  recorded in {self.manifest_path}")
        return "\n".join(lines)


@dataclass(frozen=True)
class OvaResult:
    digests: Digests
    disk_member: str
    disk_size: int
    capacity: int
    timings: dict[str, float]  # "write streamOptimized vmdk" and "write" (tar + hash): what the bench shows


def package_appliance(
    settings: Settings,
    name: str,
    version: str | None = None,
    disk: Path | None = None,
    out: Path | None = None,
    raw: bool = False,
    sign_key: Path | None = None,
    sign_cert: Path | None = None,
    profile: HardwareProfile = HardwareProfile.PORTABLE,
) -> PackageResult:
    """Package a built version (``disk`` None) or any qcow2/raw ``disk`` into ``out``."""
    if (sign_key is None) != (sign_cert is None):
        raise ConfigError("--sign-key and --sign-cert go together: give both or neither")
    appliance = find_appliance(settings.templates_dir, name)
    if sign_key is not None and sign_cert is not None:
        load_signer(sign_key, sign_cert)  # a bad pair stops us before any conversion starts
    source, fmt, version, out_dir, epoch, manifest = _inputs(settings, name, version, disk, out)
    return _package(appliance, source, fmt, version, out_dir, epoch, manifest, raw, sign_key, sign_cert, profile)


def package_build(built: BuildResult, profile: HardwareProfile = HardwareProfile.PORTABLE) -> PackageResult:
    """The recipe's package step: the build result's disk, next to its manifest, no file read again."""
    source, fmt = _build_disk(built.version_dir, built.manifest)
    epoch = source_date_epoch(built.manifest.created)
    return _package(
        built.definition, source, fmt, built.version, built.version_dir, epoch, built.manifest, profile=profile
    )


def _package(
    appliance: Appliance,
    source: Path,
    fmt: DiskFormat,
    version: str,
    out_dir: Path,
    epoch: int,
    manifest: BuildManifest | None,
    raw: bool = False,
    sign_key: Path | None = None,
    sign_cert: Path | None = None,
    profile: HardwareProfile = HardwareProfile.PORTABLE,
) -> PackageResult:
    name = appliance.name
    stem = f"{name}-{version}"
    timings: dict[str, float] = {}
    with step("package", timings):
        with step("inspect", timings):
            capacity = check_source(source, fmt)
        ova_path = out_dir / f"{stem}.ova"
        _refuse_overwrite(source, [ova_path, out_dir / f"{stem}.qcow2", out_dir / f"{stem}.raw"])
        # qemu-img's qcow2 (and raw) conversions run alongside the OVA: each is one thread, the
        # VMDK's deflate takes whatever cores are left.
        images = [DiskFormat.QCOW2, DiskFormat.RAW] if raw else [DiskFormat.QCOW2]
        with ThreadPoolExecutor(max_workers=len(images), thread_name_prefix="convert") as background:
            conversions = [
                background.submit(_converted, source, fmt, out_dir / f"{stem}.{to.value}", to, capacity, timings)
                for to in images
            ]
            with step("ova", timings):
                ova = package_ova(
                    appliance, version, source, fmt, ova_path, capacity, epoch, profile, sign_key, sign_cert
                )
            artifacts = [Artifact.from_digests(ova_path.name, "ova", "ova", ova.digests)]
            artifacts.extend(c.result() for c in conversions)
        if manifest is not None:  # a built version: its package list becomes a CycloneDX SBOM
            sbom = write_sbom(manifest.with_artifacts(artifacts), out_dir)
            artifacts.append(Artifact.from_digests(sbom.name, "sbom", "json", hash_file(sbom)))
        published = list(artifacts)
        for algo in ("sha256", "sha512"):
            sums_name = f"{algo.upper()}SUMS"
            entries = [(a.name, getattr(a, algo)) for a in published]
            digests = formats.write_sums(out_dir / sums_name, entries)
            artifacts.append(Artifact.from_digests(sums_name, f"{algo}sums", "text", digests))
    manifest_path = None
    if manifest is not None:
        manifest = manifest.with_artifacts(artifacts, {f"package.{k}": v for k, v in timings.items()})
        manifest_path = manifest.save(out_dir)
    return PackageResult(name, version, out_dir, tuple(artifacts), manifest_path, timings, appliance, manifest)


def _inputs(
    settings: Settings, name: str, version: str | None, disk: Path | None, out: Path | None
) -> tuple[Path, DiskFormat, str, Path, int, BuildManifest | None]:
    """Source disk, its format, version, output folder, member mtime and (for a build) its manifest."""
    if disk is None:
        if out is not None:
            raise ConfigError("--out only applies with --disk (a built version is packaged next to its manifest)")
        version_dir, manifest = find_version(settings.output_dir, name, version)
        source, fmt = _build_disk(version_dir, manifest)
        return source, fmt, manifest.version, version_dir, source_date_epoch(manifest.created), manifest
    if out is None:
        raise ConfigError("--out is required with --disk: the folder to write the packages into")
    version = version or _today()
    return disk, _declared_format(disk), version, out, source_date_epoch(None, version), None


def _build_disk(version_dir: Path, manifest: BuildManifest) -> tuple[Path, DiskFormat]:
    """The build disk a manifest records, if it is there with its recorded size."""
    build_disk = manifest.artifact("build-disk")
    source, fmt = version_dir / build_disk.name, DiskFormat(build_disk.format)
    actual = source.stat().st_size if source.is_file() else None
    if actual != build_disk.size:  # cheap guard; the full digest would cost another pass over the disk
        raise ArtifactError(
            f"{source}: the build disk is {'missing' if actual is None else f'{actual} bytes'}, "
            f"the manifest recorded {build_disk.size} bytes",
            hint=f"rebuild with `invoke build --appliance {manifest.appliance} --force`",
        )
    return source, fmt


def check_source(source: Path, fmt: DiskFormat) -> int:
    """The source disk's virtual size, after its header passed the Python inspection."""
    try:
        size = source.stat().st_size
        with open(source, "rb") as f:
            inspection = inspect_disk(f, fmt, size)
    except OSError as e:
        raise ArtifactError(f"{source}: cannot read the disk: {e.strerror}") from e
    if inspection.problems:
        raise ArtifactError(f"{source}: refusing to package: " + "; ".join(inspection.problems))
    capacity = formats.virtual_size(source, fmt)
    if inspection.virtual_size is not None and inspection.virtual_size != capacity:
        raise ArtifactError(f"{source}: header says {inspection.virtual_size} bytes, qemu-img says {capacity}")
    return capacity


def package_ova(
    appliance: Appliance,
    version: str,
    source: Path,
    fmt: DiskFormat,
    ova_path: Path,
    capacity: int,
    epoch: int,
    profile: HardwareProfile = HardwareProfile.PORTABLE,
    sign_key: Path | None = None,
    sign_cert: Path | None = None,
) -> OvaResult:
    """Write ``source`` as a streamOptimized VMDK, then the OVA at ``ova_path`` (atomically).

    The VMDK's sha256 is taken while it is written to a temporary file (the descriptor needs its
    size and the manifest its digest before the tar can start); the OVA's sha256/sha512 while the
    OVA is written.
    """
    stem = ova_path.stem
    ovf_name, mf_name, cert_name, disk_name = (f"{stem}.ovf", f"{stem}.mf", f"{stem}.cert", f"{stem}-disk1.vmdk")
    signer = load_signer(sign_key, sign_cert) if sign_key and sign_cert else None
    cid = int(derived_id(appliance.name, version, "vmdk-cid")[:8], 16)  # qemu-img's would be random
    try:
        disk = StreamVmdk(capacity, disk_name, PROFILES[profile].vmdk_adapter, cid)
    except VmdkWriteError as e:
        raise ArtifactError(f"{source}: cannot be packaged as a VMDK: {e}") from e
    with _private_dir(ova_path.parent, f".{stem}.vmdk.") as work:
        vmdk = work / disk_name
        timings: dict[str, float] = {}
        with step("write streamOptimized vmdk", timings):
            vmdk_sha256 = formats.write_stream_vmdk(source, fmt, vmdk, disk, work)
        started = time.monotonic()
        with open(vmdk, "rb") as f:  # our own writer's output gets the same header check as anyone's
            inspection = inspect_disk(f, DiskFormat.VMDK, vmdk.stat().st_size)
        if inspection.problems or inspection.subformat != "streamOptimized" or inspection.version != 3:
            raise ArtifactError(f"{vmdk}: unexpected VMDK written: {'; '.join(inspection.problems)}")
        if inspection.virtual_size != capacity:
            raise ArtifactError(f"{vmdk}: capacity {inspection.virtual_size} differs from the source's {capacity}")
        vmdk_size = vmdk.stat().st_size
        descriptor = build_descriptor(appliance, version, DiskRef(disk_name, vmdk_size, capacity), profile)
        mf = manifest_text([(ovf_name, hashlib.sha256(descriptor).hexdigest()), (disk_name, vmdk_sha256)])
        members = [Member.from_bytes(ovf_name, descriptor), Member.from_bytes(mf_name, mf)]
        if signer is not None:
            cert = sign_manifest(mf, mf_name, *signer)
            assert len(cert) == certificate_size(*signer, mf_name)
            members.append(Member.from_bytes(cert_name, cert))
        with (
            open(vmdk, "rb") as disk_in,
            atomic_path(ova_path) as tmp,
            open(tmp, "wb") as raw_out,
            ParallelHashingWriter(raw_out) as writer,
        ):
            write_tar(writer, [*members, Member(disk_name, vmdk_size, disk_in)], epoch)
            os.fchmod(raw_out.fileno(), PUBLISHED_MODE)
            raw_out.flush()
            os.fsync(raw_out.fileno())
    log.info("wrote %s (%d bytes)", ova_path, writer.size)
    timings["write"] = round(time.monotonic() - started, 3)
    return OvaResult(writer.digests(), disk_name, vmdk_size, capacity, timings)


def _converted(
    source: Path, fmt: DiskFormat, target: Path, to: DiskFormat, capacity: int, timings: dict[str, float]
) -> Artifact:
    """qemu-img's conversion to ``to``, hashed; runs in a background thread (timed, not nested in the log)."""
    started = time.monotonic()
    with atomic_path(target) as tmp:
        if to is DiskFormat.QCOW2:
            formats.convert_compressed_qcow2(source, fmt, tmp)
        else:
            formats.convert_raw(source, fmt, tmp)
        digests = hash_file(tmp)  # qemu-img wrote it; reading it back once is the only way to hash it
        tmp.chmod(PUBLISHED_MODE)
    timings[to.value] = round(time.monotonic() - started, 3)
    log.info("wrote %s (%d bytes) in %.1fs", target, digests.size, timings[to.value])
    return Artifact.from_digests(target.name, to.value, to.value, digests, virtual_size=capacity)


@contextmanager
def _private_dir(parent: Path, prefix: str) -> Iterator[Path]:
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _declared_format(disk: Path) -> DiskFormat:
    suffix = disk.suffix.lower()
    if suffix == ".qcow2":
        return DiskFormat.QCOW2
    if suffix in (".raw", ".img"):
        return DiskFormat.RAW
    raise ConfigError(f"{disk}: --disk: name must end in .qcow2, .raw or .img (the format is never guessed)")


def _refuse_overwrite(source: Path, outputs: list[Path]) -> None:
    for p in outputs:
        if p.exists() and p.resolve() == source.resolve():
            raise ConfigError(f"{source}: --disk: is where the package would write {p.name}; use another --out")


def _today() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = dt.datetime.fromtimestamp(int(epoch), dt.UTC) if epoch else dt.datetime.now(dt.UTC)
    return moment.strftime("%Y.%m.%d")


def source_date_epoch(created: str | None, version: str | None = None) -> int:
    """The mtime of every OVA member: SOURCE_DATE_EPOCH, else the build's creation time, else the
    date a YYYY.MM.DD version names, else 0. Never the clock, so repackaging gives the same bytes."""
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env:
        try:
            return int(env)
        except ValueError as e:
            raise ConfigError(f"SOURCE_DATE_EPOCH: {env!r} is not an integer") from e
    if created:
        return int(dt.datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp())
    if version:
        try:
            day = dt.datetime.strptime(".".join(version.split(".")[:3]), "%Y.%m.%d").replace(tzinfo=dt.UTC)
            return int(day.timestamp())
        except ValueError:
            pass
    return 0


def write_sbom(manifest: BuildManifest, out_dir: Path, licenses: Mapping[str, Sequence[str]] | None = None) -> Path:
    """Write ``<appliance>-<version>.cdx.json`` into ``out_dir`` (atomically); call it after the images
    are recorded in ``manifest`` (their digests go into the SBOM) and before the checksum files."""
    path = out_dir / sbom_file_name(manifest)
    write_text_atomic(path, sbom_json(manifest, licenses).decode())
    return path
