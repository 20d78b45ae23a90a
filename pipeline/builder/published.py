"""The base of a layered appliance when this runner never built it: the newest version the catalogue
records, its published qcow2 fetched from the repository (any backend), verified against the
catalogue's sha512 and cached content-addressed. CI runners start empty; the catalogue and the
repository are the state (issue 13).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.catalogue.contract import BuildRecord
from pipeline.errors import ArtifactError, BuildError, PipelineError
from pipeline.fsutil import HashingWriter, atomic_write, hash_file
from pipeline.log import log
from pipeline.manifest import BuildManifest, find_version
from pipeline.settings import Settings


@dataclass(frozen=True)
class BaseBuild:
    manifest: BuildManifest
    version_dir: Path | None  # None: not built here, only published (a fresh CI runner)
    record: BuildRecord | None = None


def newest_base_build(settings: Settings, name: str) -> BaseBuild:
    """The newest build of base appliance ``name``: this runner's own, else the catalogue's newest
    published one (CI runners start empty; the catalogue records what was built)."""
    try:
        version_dir, manifest = find_version(settings.output_dir, name)
        return BaseBuild(manifest, version_dir)
    except ArtifactError as e:
        record = _published(settings, name)
        if record is None:
            raise ArtifactError(f"{e.message}, and the catalogue {settings.catalogue} has no published version",
                                hint=e.hint) from e  # fmt: skip
        return BaseBuild(BuildManifest.from_dict(dict(record.manifest), f"catalogue: {name} {record.version}"),
                         None, record)  # fmt: skip


def _published(settings: Settings, name: str) -> BuildRecord | None:
    from pipeline.catalogue.client import open_catalogue

    url = settings.catalogue
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).exists():
        return None  # nothing was ever published from here
    catalogue = open_catalogue(settings)
    try:
        return catalogue.build_record(name)
    finally:
        catalogue.close()


def fetch_published_disk(settings: Settings, record: BuildRecord) -> Path:
    """The published qcow2 of ``record`` from the repository (any backend), verified against the
    catalogue's sha512 and cached content-addressed under ``<cache_dir>/images/``."""
    from pipeline.builder.base import MAX_BASE_IMAGE_BYTES, fetch_image
    from pipeline.repository import open_repository

    image = next((i for i in record.images if i.format == "qcow2"), None)
    what = f"{record.appliance} {record.version}"
    if image is None:
        raise BuildError("base", f"catalogue: {what} has no qcow2 image to build on",
                         hint=f"rebuild it: invoke rebuild --appliance {record.appliance}")  # fmt: skip
    repository = open_repository(settings)
    key = repository.key_for_url(image.uri)
    if key is None:  # published elsewhere: download it by its URL, verified the same way
        return fetch_image(image.uri, f"sha512:{image.sha512}", "qcow2", settings.cache_dir)
    target = settings.cache_dir / "images" / f"sha512-{image.sha512}.qcow2"
    if target.is_file() and hash_file(target).sha512 == image.sha512:
        log.info("base %s from cache: %s", what, target.name[:24])
        return target
    log.info("fetching base %s from %s", what, repository.url)
    try:
        with atomic_write(target) as raw:
            writer = HashingWriter(raw)
            repository.fetch(key, writer, min(image.size, MAX_BASE_IMAGE_BYTES))
            got = writer.digests()
            if got.sha512 != image.sha512:
                raise ArtifactError(f"{repository.url}: {key}: sha512 is {got.sha512[:16]}..., "
                                    f"the catalogue says {image.sha512[:16]}...")  # fmt: skip
    except PipelineError as e:
        raise BuildError("base", f"base {what}: {e.message}", hint=e.hint) from e
    except OSError as e:
        raise BuildError("base", f"base {what}: cannot write {target}: {e}") from e
    return target
