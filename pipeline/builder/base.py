"""Where a build starts: a disk made here from the package mirror (``bootstrap``), an upstream cloud
image (``image``: URL + checksum) or the newest build of another appliance (``appliance``).

``base_component()`` is cheap (no download, no bootstrap) and feeds the cache key; ``prepare_base()``
produces the actual disk, verified, and the ``BaseRef`` recorded in the manifest.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import requests

from pipeline.appliance import Appliance, BaseKind, Firmware
from pipeline.builder import bootstrap, disk
from pipeline.builder.published import fetch_published_disk, newest_base_build
from pipeline.errors import ArtifactError, BuildError
from pipeline.fsutil import CHUNK, HashingWriter, atomic_write, hash_file
from pipeline.log import log
from pipeline.manifest import BaseRef
from pipeline.settings import Settings

DOWNLOAD_TIMEOUT = 60.0
# an upstream cloud image is a few hundred MiB; a server sending endless bytes must not fill the disk
MAX_BASE_IMAGE_BYTES = 32 * 1024**3


@dataclass(frozen=True)
class PreparedBase:
    disk: Path
    ref: BaseRef


def base_component(settings: Settings, appliance: Appliance, tools: dict[str, str]) -> str:
    """A string that changes whenever the base would change (input of the cache key)."""
    base = appliance.base
    if base.kind is BaseKind.BOOTSTRAP:
        assert base.bootstrap is not None
        key = bootstrap.bootstrap_key(base.bootstrap, appliance.arch, tools.get("mmdebstrap", ""))
        code = hashlib.sha256(Path(disk.__file__).read_bytes()).hexdigest()
        doc: dict[str, str | int] = {"bootstrap": key, "disk": code, "size_gb": appliance.hardware.disk_gb}
        if appliance.firmware is not Firmware.BIOS:
            doc["firmware"] = appliance.firmware.value
        return json.dumps(doc)
    if base.kind is BaseKind.IMAGE:
        assert base.image is not None
        return json.dumps({"image": base.image.url, "checksum": base.image.checksum, "format": base.image.format})
    assert base.appliance is not None
    manifest = newest_base_build(settings, base.appliance).manifest
    return json.dumps({"appliance": base.appliance, "version": manifest.version,
                       "sha256": manifest.artifact("build-disk").sha256})  # fmt: skip


def prepare_base(settings: Settings, appliance: Appliance, work_dir: Path, log_file: TextIO) -> PreparedBase:
    """The bootable base disk for ``appliance`` and its provenance."""
    base = appliance.base
    if base.kind is BaseKind.BOOTSTRAP:
        assert base.bootstrap is not None
        rootfs = bootstrap.make_rootfs(base.bootstrap, appliance.arch, settings.cache_dir, work_dir, log_file)
        path = disk.base_disk(
            rootfs.tarball,
            rootfs.sha256,
            appliance.hardware.disk_gb,
            settings.cache_dir,
            work_dir,
            log_file,
            appliance.firmware,
        )
        return PreparedBase(path, BaseRef("bootstrap", rootfs.ref, f"sha256:{rootfs.sha256}", rootfs.sources))
    if base.kind is BaseKind.IMAGE:
        assert base.image is not None
        path = fetch_image(base.image.url, base.image.checksum, base.image.format, settings.cache_dir)
        return PreparedBase(path, BaseRef("image", base.image.url, base.image.checksum))
    assert base.appliance is not None
    return PreparedBase(*_appliance_disk(settings, base.appliance))


def _appliance_disk(settings: Settings, name: str) -> tuple[Path, BaseRef]:
    found = newest_base_build(settings, name)
    manifest, version_dir = found.manifest, found.version_dir
    if version_dir is None:
        assert found.record is not None
        return fetch_published_disk(settings, found.record), BaseRef(
            "appliance", f"{name}@{manifest.version}", f"sha256:{manifest.artifact('build-disk').sha256}",
            manifest.base.sources)  # fmt: skip
    artifact = manifest.artifact("build-disk")
    path = version_dir / artifact.name
    if not path.is_file():
        raise BuildError("base", f"{path}: the build disk of {name} {manifest.version} is missing",
                         hint=f"rebuild it: invoke build --appliance {name} --force")  # fmt: skip
    actual = hash_file(path)
    if actual.sha256 != artifact.sha256:
        raise BuildError("base", f"{path}: sha256 {actual.sha256} does not match its manifest ({artifact.sha256})")
    ref = BaseRef("appliance", f"{name}@{manifest.version}", f"sha256:{artifact.sha256}", manifest.base.sources)
    return path, ref


def fetch_image(url: str, checksum: str, fmt: str, cache_dir: Path) -> Path:
    """Download ``url`` (http, https or file) into the cache, verified against ``checksum``
    (``sha256:<hex>`` or ``sha512:<hex>``); a cached copy is re-verified, never trusted blindly."""
    algo, _, expected = checksum.partition(":")
    if algo not in ("sha256", "sha512") or not expected:
        raise BuildError("base", f"checksum {checksum!r} must be sha256:<hex> or sha512:<hex>")
    target = cache_dir / "images" / f"{algo}-{expected}.{fmt}"
    if target.is_file():
        got = hash_file(target)
        if getattr(got, algo) == expected:
            log.info("base image from cache: %s", target.name[:24])
            return target
        target.unlink()
    log.info("downloading base image %s", url)
    parsed = urllib.parse.urlparse(url)
    try:
        with atomic_write(target) as raw:
            writer = HashingWriter(raw)
            if parsed.scheme == "file":
                with open(urllib.parse.unquote(parsed.path), "rb") as src:
                    shutil.copyfileobj(src, writer, CHUNK)
            else:
                with requests.get(url, stream=True, timeout=DOWNLOAD_TIMEOUT) as response:
                    response.raise_for_status()
                    received = 0
                    for chunk in response.iter_content(CHUNK):
                        received += len(chunk)
                        if received > MAX_BASE_IMAGE_BYTES:
                            raise ArtifactError(f"{url}: more than {MAX_BASE_IMAGE_BYTES} bytes (base image cap)")
                        writer.write(chunk)
            got = writer.digests()
            if getattr(got, algo) != expected:
                raise ArtifactError(f"{url}: {algo} is {getattr(got, algo)}, the definition says {expected}")
    except (OSError, requests.RequestException) as e:
        raise BuildError("base", f"could not download {url}: {e}") from e
    except ArtifactError as e:
        raise BuildError("base", str(e), hint="check base.image.checksum in the appliance definition") from e
    return target
