"""Publish: put a packaged version in the repository, prove it landed, then register it in the catalogue.

The order is the guarantee (after debian-cloud-images' publish step): every artifact is uploaded to
an immutable key and verified there (size, sha256, sha512 of the stored bytes) before the version
is registered, in one catalogue transaction. A publish killed at any point is completed by running
it again: uploads resume from the journal, objects already there are proved rather than sent, and
registration is idempotent. So the catalogue never lists an image that is not in the repository.
Last, once the registration succeeded, ``published.json`` is written beside the manifest: the
receipt ``PublishResult.load`` rebuilds the result from, offline (``invoke endorse`` resumes from it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pipeline.appliance import Appliance, find_appliance
from pipeline.catalogue.client import open_catalogue
from pipeline.catalogue.contract import Catalogue, ImageInfo, VersionConflict, VersionInfo, VersionPayload
from pipeline.errors import ArtifactError, CatalogueError, ReceiptError, UploadError
from pipeline.formats.sbom import sbom_file_name, sbom_json
from pipeline.fsutil import Digests
from pipeline.log import log, step
from pipeline.manifest import Artifact, BuildManifest
from pipeline.package import PackageResult
from pipeline.publicurls import public_url_warning
from pipeline.receipt import from_json, read_receipt, reading, to_json, write_receipt
from pipeline.registration import appliance_payload, version_payload_from_build
from pipeline.repository import PutOutcome, PutResult, Repository, UploadJournal, UploadTuning, open_repository
from pipeline.repository.journal import exclusive
from pipeline.repository.oci import OciImagePlan, OciPush, OciRepository
from pipeline.settings import Settings, repository_urls

# What goes to the repository, in this order (images first, their checksum files last), and
# which of those become catalogue images. A role marked False may be absent (raw is optional).
PUBLISHED: tuple[tuple[str, bool], ...] = (
    ("ova", True),
    ("qcow2", True),
    ("raw", False),
    ("sha256sums", True),
    ("sha512sums", True),
)
IMAGE_ROLES = ("ova", "qcow2")
PUBLISHED_FILE = "published.json"  # the receipt of a finished publish, beside the manifest
T = TypeVar("T")


@dataclass(frozen=True)
class PlannedUpload:
    artifact: Artifact
    key: str
    url: str

    @property
    def digests(self) -> Digests:
        return Digests(self.artifact.size, self.artifact.sha256, self.artifact.sha512)


@dataclass(frozen=True)
class PublishTarget:
    """What goes to one repository: files by key (file://, s3://), or image artifacts (oci://)."""

    repository: str
    uploads: tuple[PlannedUpload, ...] = ()
    images: tuple[OciImagePlan, ...] = ()  # qcow2 first, then the OVA

    def locations(self) -> dict[str, str]:
        """Artifact name -> where this repository serves it (the URL, or ``oci://`` + reference)."""
        found = {u.artifact.name: u.url for u in self.uploads if u.artifact.role in IMAGE_ROLES}
        return found | {i.disk.name: f"oci://{i.reference}" for i in self.images}


@dataclass(frozen=True)
class PublishPlan:
    """Everything a publish will write, worked out before anything is written (what --dry-run shows)."""

    appliance: Appliance
    manifest: BuildManifest
    version_dir: Path
    payload: VersionPayload
    targets: tuple[PublishTarget, ...]  # the primary repository first

    @property
    def repository(self) -> str:
        return " ".join(t.repository for t in self.targets)

    @property
    def uploads(self) -> tuple[PlannedUpload, ...]:
        return self.targets[0].uploads

    @property
    def oci(self) -> OciImagePlan | None:
        """The qcow2 artifact of the first registry (the one EGI's atrope syncs), if any."""
        return next((t.images[0] for t in self.targets if t.images), None)

    @property
    def journal_path(self) -> Path:
        return self.version_dir.parent / f".{self.manifest.version}.publish-journal.json"

    @property
    def lock_path(self) -> Path:
        return self.version_dir.parent / f".{self.manifest.version}.publish.lock"


@dataclass(frozen=True)
class PublishResult:
    plan: PublishPlan
    dry_run: bool
    puts: tuple[PutResult, ...] = ()
    registered: VersionInfo | None = None
    catalogue_url: str | None = None
    pushes: tuple[OciPush, ...] = ()
    audit_stored: bool = False  # the audit report publish was given is stored with the version

    @classmethod
    def load(cls, settings: Settings, definition: Appliance, version: str | None = None) -> PublishResult:
        """A published version (default: the newest built one) as its receipt records it, rebuilt
        without asking the repository or the catalogue: where a stopped recipe resumes after publish.

        The plan is worked out again from the package and the repositories the receipt names (files
        only; nothing is opened over the network), and must name the keys the receipt recorded; the
        registered images must be this package's bytes."""
        packaged = None
        if version is None:
            packaged = PackageResult.load(settings, definition)
            version = packaged.version
        name = definition.name
        path = settings.version_dir(name, version) / PUBLISHED_FILE
        hint = f"run `invoke publish {name} --version {version}`"
        data = read_receipt(
            path, "publish", f"{name} {version} was never published (or its publish did not finish)", hint
        )
        packaged = packaged or PackageResult.load(settings, definition, version)
        with reading(path, hint):
            urls = [str(u) for u in data["repositories"]]
            recorded = dataclasses.replace(
                settings,
                repository=urls[0],
                mirror_repositories=tuple(urls[1:]),
                repository_public_url=str(data["repository_public_url"]),
            )
            insecure = bool(data["insecure"])
            plan = plan_targets(packaged, [open_repository(recorded, None, insecure, url) for url in urls])
            result = cls(
                plan,
                False,
                tuple(from_json(PutResult, p) for p in data["puts"]),
                from_json(VersionInfo, data["registered"]),
                str(data["catalogue_url"]),
                tuple(from_json(OciPush, p) for p in data["pushes"]),
                from_json(bool, data["audit_stored"]),
            )
            keys = data["keys"]
        if keys != receipt_keys(plan):
            raise ReceiptError(f"{path}: records other keys than the plan for {packaged.out_dir} now names", hint)
        ours = {a.sha512 for a in plan.manifest.artifacts}
        if result.registered is None or not all(i.sha512 in ours for i in result.registered.images):
            raise ReceiptError(f"{path}: records images that are not this package's (packaged again since?)", hint)
        return result

    def summary(self) -> str:
        m = self.plan.manifest
        if self.dry_run:
            lines = [f"dry run: would publish {m.appliance} {m.version} to {self.plan.repository}"]
            for target in self.plan.targets:
                lines.append(f" {target.repository}:")
                lines += [f"  {u.key}  ({u.artifact.size} bytes, sha256 {u.artifact.sha256})" for u in target.uploads]
                lines += [image.describe() for image in target.images]
            lines.append("catalogue payload:")
            lines.append(json.dumps(payload_json(self.plan.payload), indent=2, sort_keys=True))
            return "\n".join(lines)
        lines = [f"published {m.appliance} {m.version} to {self.plan.repository}"]
        for p in self.puts:
            how = {
                PutOutcome.UPLOADED: f"uploaded, verified ({p.mib_per_s:.1f} MiB/s)",
                PutOutcome.RESUMED: f"resumed, verified ({p.mib_per_s:.1f} MiB/s)",
                PutOutcome.PRESENT: "already there, verified",
            }[p.outcome]
            lines.append(f"  {p.key}: {how}")
        for push in self.pushes:
            blob = "uploaded" if push.blob is PutOutcome.UPLOADED else "already there"
            lines.append(f"  {push.reference}: disk {blob}; blobs, manifests and tags read back and verified")
            lines.append(
                f"  rolling tag {push.rolling}: now this image"
                if push.rolling
                else "  rolling tag: left on a newer version"
            )
        if self.registered is not None:
            images = ", ".join(i.uri for i in self.registered.images)
            lines.append(f"registered in the catalogue: {images}")
        if self.catalogue_url:
            lines.append(f"catalogue: {self.catalogue_url}")
        return "\n".join(lines)


def payload_json(payload: VersionPayload) -> dict[str, Any]:
    """The payload as JSON-ready data (what --dry-run prints); the manifest is shown by reference."""
    data = payload.model_dump()
    data["expires"] = payload.expires.isoformat() if payload.expires else None
    for image in data["images"]:
        image["manifest"] = f"<build manifest of {payload.appliance} {payload.version}>"
        image["packages"] = f"<{len(image['packages'])} packages>"
    if payload.sbom is not None:
        data["sbom"] = f"<CycloneDX SBOM, {len(payload.sbom.encode())} bytes>"
    return data


def plan_publish(packaged: PackageResult, repository: Repository) -> PublishPlan:
    """Check the version is packaged and its files are all there, and work out keys and payload."""
    appliance, version_dir, manifest = _built(packaged)
    name = appliance.name
    uploads, problems = [], []
    for role, required in PUBLISHED:
        found = [a for a in manifest.artifacts if a.role == role]
        if not found:
            if required:
                problems.append(f"{version_dir / 'manifest.json'}: artifacts: no {role} artifact")
            continue
        for artifact in found:
            path = version_dir / artifact.name
            if not path.is_file():
                problems.append(f"{path}: missing (the manifest lists it as the {role} artifact)")
            elif path.stat().st_size != artifact.size:
                problems.append(f"{path}: {path.stat().st_size} bytes, the manifest says {artifact.size}")
            key = f"{name}/{manifest.version}/{Path(artifact.name).name}"
            uploads.append(PlannedUpload(artifact, key, repository.public_url(key)))
    sbom = sbom_artifact(manifest)
    if sbom.role == "sbom" or (version_dir / sbom.name).is_file():  # packaged with its SBOM: it goes along
        sbom_key = f"{name}/{manifest.version}/{sbom.name}"
        uploads.append(PlannedUpload(sbom, sbom_key, repository.public_url(sbom_key)))
    if problems:
        raise ArtifactError(
            f"{name} {manifest.version} is not ready to publish:\n  " + "\n  ".join(problems),
            hint=f"run `invoke package --appliance {name} --version {manifest.version}`",
        )
    target = PublishTarget(repository.url, tuple(uploads))
    sbom_text = sbom_data(version_dir, manifest).decode()
    payload = version_payload_from_build(appliance, manifest, target.locations(), sbom=sbom_text)
    return PublishPlan(appliance, manifest, version_dir, payload, (target,))


def sbom_artifact(manifest: BuildManifest) -> Artifact:
    """The SBOM as packaging recorded it (role ``sbom``), else the one ``write_sbom`` makes from the
    manifest (role ``sbom-derived``): it is deterministic, so the file packaging wrote next to the
    images has these bytes, and a version packaged before SBOMs existed gets them too."""
    for a in manifest.artifacts:
        if a.role == "sbom":
            return a
    data = sbom_json(manifest)
    d = hash_bytes(data)
    return Artifact(sbom_file_name(manifest), "sbom-derived", "json", d.size, d.sha256, d.sha512)


def _built(packaged: PackageResult) -> tuple[Appliance, Path, BuildManifest]:
    """What a packaged built version carries: the definition, its folder and its manifest."""
    if packaged.manifest is None:  # packaged from --disk: no build manifest, nothing to register
        raise ArtifactError(f"{packaged.out_dir}: not a built version", hint="publish a version `invoke build` made")
    return packaged.definition, packaged.out_dir, packaged.manifest


def sbom_data(version_dir: Path, manifest: BuildManifest) -> bytes:
    """The SBOM's bytes as packaged (or derived), checked against what the manifest records."""
    sbom = sbom_artifact(manifest)
    path = version_dir / sbom.name
    data = path.read_bytes() if sbom.role == "sbom" else sbom_json(manifest)
    if hash_bytes(data) != Digests(sbom.size, sbom.sha256, sbom.sha512):
        raise ArtifactError(f"{path}: not the SBOM the manifest records", hint="package the version again")
    return data


def hash_bytes(data: bytes) -> Digests:
    return Digests(len(data), hashlib.sha256(data).hexdigest(), hashlib.sha512(data).hexdigest())


def publish_version(
    settings: Settings,
    name: str,
    version: str | None = None,
    dry_run: bool = False,
    tuning: UploadTuning | None = None,
    insecure: bool = False,
) -> PublishResult:
    """Upload a packaged version's artifacts, verify them in the repository, then register the version.

    ``insecure``: plain HTTP to a registry on a loopback address (tests); refused for any other host.
    """
    appliance = find_appliance(settings.templates_dir, name, settings.provisioners_dir)
    return publish_packaged(settings, PackageResult.load(settings, appliance, version), dry_run, tuning, insecure)


def publish_packaged(
    settings: Settings,
    packaged: PackageResult,
    dry_run: bool = False,
    tuning: UploadTuning | None = None,
    insecure: bool = False,
    *,
    catalogue: Catalogue | None = None,
    audit: Mapping[str, Any] | None = None,
) -> PublishResult:
    """The recipe's publish step: ``publish_version`` for what the package step returned.

    ``catalogue``: one the caller holds open (and closes), so a rebuild opens it once for its race
    check, this registration and the audit; ``audit``: a policy audit report (``AuditReport.to_dict()``)
    made before publish, stored with the version once it is registered."""
    name = packaged.appliance
    if (warning := public_url_warning(settings)) is not None:  # the defaults name this machine
        log.warning("%s", warning)
    repositories = [open_repository(settings, tuning, insecure, url) for url in repository_urls(settings)]
    plan = plan_targets(packaged, repositories)
    if dry_run:
        return PublishResult(plan, dry_run=True)
    what = f"{name} {plan.manifest.version}"
    puts: list[PutResult] = []
    pushes: list[OciPush] = []
    receipt = plan.version_dir / PUBLISHED_FILE
    with exclusive(plan.lock_path, what), step(f"publish {what}"):
        receipt.unlink(missing_ok=True)  # present again only once this publish has finished
        for repository in repositories:
            repository.preflight()
        cat = open_catalogue(settings) if catalogue is None else catalogue
        try:
            # every repository written and verified before the one registration: a failure in any
            # leaves no catalogue entry (running publish again completes the others)
            for repository, target in zip(repositories, plan.targets, strict=True):
                if isinstance(repository, OciRepository):
                    for image in target.images:
                        with step(f"push {image.reference}"):
                            pushes.append(repository.push_image(image, plan.version_dir / image.disk.name))
                else:
                    puts += _upload_all(repository, plan, target)
            with step("register in the catalogue"):
                _once_more_on_conflict(lambda: cat.ensure_appliance(appliance_payload(plan.appliance)))
                registered = _once_more_on_conflict(lambda: cat.register_version(plan.payload))
            stored = audit is not None and _store_audit(cat, name, plan.manifest.version, audit)
        finally:
            if catalogue is None:
                cat.close()
        url = catalogue_page(settings, name, plan.manifest.version)
        result = PublishResult(plan, False, tuple(puts), registered, url, tuple(pushes), stored)
        write_receipt(receipt, "publish", receipt_body(settings, result, insecure))
    return result


def receipt_body(settings: Settings, result: PublishResult, insecure: bool) -> dict[str, Any]:
    """What ``published.json`` records: where the version went (so ``load`` plans it again the same way),
    the keys written there, what each put did, and the version as the catalogue registered it."""
    return {
        "appliance": result.plan.appliance.name,
        "version": result.plan.manifest.version,
        "repositories": list(repository_urls(settings)),
        "repository_public_url": settings.repository_public_url,
        "insecure": insecure,
        "keys": receipt_keys(result.plan),
        "puts": to_json(result.puts),
        "pushes": to_json(result.pushes),
        "registered": to_json(result.registered),
        "catalogue_url": result.catalogue_url,
        "audit_stored": result.audit_stored,
    }


def receipt_keys(plan: PublishPlan) -> dict[str, list[str]]:
    """Repository -> the keys (or OCI references) a publish of ``plan`` writes there."""
    return {t.repository: [u.key for u in t.uploads] + [i.reference for i in t.images] for t in plan.targets}


def _store_audit(catalogue: Catalogue, name: str, version: str, report: Mapping[str, Any]) -> bool:
    """Store an audit made before the version was registered; the audit stands on its own if the
    catalogue refuses (``audit.json`` keeps it, ``invoke endorse`` stores it again)."""
    try:
        catalogue.store_audit(name, version, report)
    except CatalogueError as e:
        log.warning("audit not stored in the catalogue: %s", e)
        return False
    log.info("audit stored with %s %s in the catalogue", name, version)
    return True


def plan_targets(packaged: PackageResult, repositories: list[Repository]) -> PublishPlan:
    """The plan for every repository; the catalogue payload names the primary's URLs as the images'
    URIs and every repository's in their ``locations``."""
    targets: list[PublishTarget] = []
    plan: PublishPlan | None = None
    for repository in repositories:
        if isinstance(repository, OciRepository):
            one = plan_oci(packaged, repository)
        else:
            one = plan_publish(packaged, repository)
        plan = plan or one
        targets += one.targets
    assert plan is not None
    located: dict[str, list[str]] = {}
    for target in targets:
        for artifact, where in target.locations().items():
            located.setdefault(artifact, []).append(where)
    payload = version_payload_from_build(
        plan.appliance, plan.manifest, targets[0].locations(), locations=located, sbom=plan.payload.sbom
    )
    return dataclasses.replace(plan, payload=payload, targets=tuple(targets))


def plan_oci(packaged: PackageResult, repository: OciRepository) -> PublishPlan:
    """The image artifacts (qcow2, then OVA; EGI annotations + SBOM referrer) and the payload naming
    their references."""
    appliance, version_dir, manifest = _built(packaged)
    name = appliance.name
    for role in ("qcow2", "ova"):
        disk = manifest.artifact(role)
        path = version_dir / disk.name
        actual = path.stat().st_size if path.is_file() else None
        if actual != disk.size:
            raise ArtifactError(
                f"{path}: {'missing' if actual is None else f'{actual} bytes'}; the manifest says {disk.size} bytes",
                hint=f"run `invoke package --appliance {name} --version {manifest.version}`",
            )
    sbom, data = sbom_artifact(manifest), sbom_data(version_dir, manifest)
    images = tuple(repository.plan_image(appliance, manifest, data, sbom.name, role) for role in ("qcow2", "ova"))
    target = PublishTarget(repository.url, (), images)
    payload = version_payload_from_build(appliance, manifest, target.locations(), sbom=data.decode())
    return PublishPlan(appliance, manifest, version_dir, payload, (target,))


def _once_more_on_conflict(call: Callable[[], T]) -> T:
    """A concurrent publish of the same version may win a race in the catalogue; both calls are
    idempotent, so asking again returns what the winner wrote if it is the same (else the conflict)."""
    try:
        return call()
    except VersionConflict:
        return call()


def _upload_all(repository: Repository, plan: PublishPlan, target: PublishTarget) -> list[PutResult]:
    path = plan.journal_path
    if repository.url != plan.targets[0].repository:  # a mirror keeps its own journal
        path = path.with_name(f"{path.stem}-{hashlib.sha256(repository.url.encode()).hexdigest()[:12]}.json")
    journal = UploadJournal(path, repository.url)
    if journal.keys():
        log.info("resuming a publish that stopped: %s", ", ".join(journal.keys()))
    puts = []
    for upload in target.uploads:
        path = plan.version_dir / upload.artifact.name
        with step(f"upload {upload.key}"):
            result = repository.put(upload.key, path, upload.digests, journal)
            if result.outcome is not PutOutcome.PRESENT:  # PRESENT was verified by put itself
                problems = repository.verify(upload.key, upload.digests)
                if problems:
                    # ours (this run created it) and never registered: remove it so no one downloads it
                    repository.delete(upload.key)
                    raise UploadError(
                        f"{repository.url}: what landed at {upload.key} is not what was sent (removed): "
                        + "; ".join(problems),
                        hint="the bytes were damaged on the way; publish again",
                    )
        puts.append(result)
    return puts


def catalogue_page(settings: Settings, name: str, version: str) -> str:
    return f"{settings.catalogue_public_url.rstrip('/')}/appliances/{name}/{version}"


# -- audit: is the repository still what the catalogue says? -------------------------------------


@dataclass(frozen=True)
class AuditReport:
    repository: str
    checked: int
    drift: tuple[str, ...]  # one line per problem: missing, wrong size, wrong checksum, foreign URI
    unregistered: tuple[str, ...]  # objects no registered version accounts for (informational)

    @property
    def ok(self) -> bool:
        return not self.drift

    def summary(self) -> str:
        head = f"audit of {self.repository}: {self.checked} registered image(s) checked, "
        head += "no drift" if self.ok else f"{len(self.drift)} problem(s)"
        lines = [head, *(f"  DRIFT {d}" for d in self.drift)]
        if self.unregistered:
            lines.append(f"  {len(self.unregistered)} object(s) belong to no registered version:")
            lines += [f"    {k}" for k in self.unregistered]
        return "\n".join(lines)


def audit_repository(settings: Settings, catalogue: Catalogue | None = None, url: str | None = None) -> AuditReport:
    """Re-check every registered image against one repository (default: the primary; ``url``: a mirror):
    exists, size, checksums of the stored bytes. An image is found there by its URI or by one of the
    locations the catalogue recorded for it; one that names no location there is drift."""
    return audit_repositories(settings, catalogue, (url or settings.repository,))[0]


def audit_repositories(
    settings: Settings, catalogue: Catalogue | None = None, urls: tuple[str, ...] | None = None
) -> tuple[AuditReport, ...]:
    """``audit_repository`` for every repository publish writes to (the primary, then the mirrors), from
    one read of the catalogue."""
    repositories = [open_repository(settings, url=url) for url in (urls or repository_urls(settings))]
    for repository in repositories:
        repository.preflight()
    own = catalogue is None
    cat = open_catalogue(settings) if catalogue is None else catalogue
    try:
        images = cat.list_images()
    finally:
        if own:
            cat.close()
    return tuple(_audit_one(repository, images) for repository in repositories)


def _audit_one(repository: Repository, images: list[ImageInfo]) -> AuditReport:
    drift: list[str] = []
    folders = set()
    with step(f"audit {len(images)} image(s) in {repository.url}"):
        for image in images:
            where = f"{image.appliance} {image.version}"
            key = next((k for u in (image.uri, *image.locations) if (k := repository.key_for_url(u))), None)
            if key is None:
                drift.append(f"{where}: {image.uri} is not in {repository.url}")
                continue
            folders.add(key.rsplit("/", 1)[0] + "/")
            problems = repository.verify(key, Digests(image.size, image.sha256, image.sha512))
            drift += [f"{where}: {p}" for p in problems]
    unregistered = tuple(o.key for o in repository.iter_objects() if not any(o.key.startswith(f) for f in folders))
    return AuditReport(repository.url, len(images), tuple(drift), unregistered)
