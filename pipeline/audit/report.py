"""Policy audit of a built image (``invoke audit-image``), offline and read-only.

Opens the build disk with its declared format, copies the root filesystem out in userspace
(``disk.py``), runs every check of ``policy.py``, applies the appliance's waivers
(``packer_templates/<name>/audit-waivers.yaml``: check id + reason) and writes ``audit.json``
next to the manifest. Pending security updates are judged against the security suite's
``Packages`` index fetched from the mirror at audit time.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from pipeline.appliance import Appliance, BaseKind, find_appliance
from pipeline.audit.checks import CHECK_IDS, CHECKS
from pipeline.audit.disk import open_root
from pipeline.audit.policy import AuditContext
from pipeline.errors import CatalogueError, ConfigError
from pipeline.formats import debian_index
from pipeline.fsutil import write_text_atomic
from pipeline.log import log, step
from pipeline.manifest import BuildManifest, InstalledPackage, find_version
from pipeline.netutil import get_capped
from pipeline.settings import Settings

AUDIT_FILE = "audit.json"
WAIVERS_FILE = "audit-waivers.yaml"
FORMAT_VERSION = 1
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
DEBIAN_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
FETCH_TIMEOUT = 60.0
MAX_COMPRESSED_INDEX_BYTES = 64 * 1024**2


class CheckStatus(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    WAIVED = "waived"


@dataclass(frozen=True)
class CheckResult:
    id: str
    title: str
    result: CheckStatus
    evidence: tuple[str, ...]
    waiver: str | None = None  # the reason a failure is accepted

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "title": self.title, "result": str(self.result)}
        data["evidence"] = list(self.evidence)
        if self.waiver is not None:
            data["waiver"] = self.waiver
        return data


@dataclass(frozen=True)
class AuditReport:
    appliance: str
    version: str
    disk: str
    audited_at: str
    checks: tuple[CheckResult, ...]
    seconds: float
    waivers_file: str | None = None
    disk_sha256: str | None = None  # which build disk was audited (lets endorse reuse a fresh report)
    waivers: tuple[tuple[str, str], ...] = ()  # (check id, reason) in force when it ran

    @property
    def passed(self) -> bool:
        """True when no check fails (waived failures are accepted)."""
        return all(c.result != CheckStatus.FAIL for c in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if c.result == CheckStatus.FAIL]

    def check(self, check_id: str) -> CheckResult:
        return next(c for c in self.checks if c.id == check_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "appliance": self.appliance,
            "version": self.version,
            "disk": self.disk,
            "audited_at": self.audited_at,
            "result": "pass" if self.passed else "fail",
            "seconds": self.seconds,
            "waivers_file": self.waivers_file,
            "waivers": dict(self.waivers),
            "disk_sha256": self.disk_sha256,
            "checks": [c.to_dict() for c in self.checks],
        }

    def summary(self) -> str:
        lines = [f"policy audit of {self.appliance} {self.version} ({self.disk})"]
        for c in self.checks:
            lines.append(f"  {str(c.result).upper():6} {c.id}: {c.title}")
            shown = c.evidence if c.result != CheckStatus.PASS else c.evidence[:1]
            lines += [f"           {e}" for e in shown]
            if c.waiver:
                lines.append(f"           waived: {c.waiver}")
        waived = sum(c.result == CheckStatus.WAIVED for c in self.checks)
        if self.passed:
            lines.append(f"audit passed: {len(self.checks)} checks, {waived} waived ({self.seconds:.1f}s)")
        else:
            lines.append(f"audit FAILED: {', '.join(c.id for c in self.failures)}")
        return "\n".join(lines)


def load_waivers(path: Path) -> dict[str, str]:
    """check id -> reason from an appliance's waiver file (absent file: no waivers); every mistake reported."""
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    items = data.get("waivers") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ConfigError(f"{path}: waivers: must be a list of {{check: ID, reason: TEXT}}")
    waivers, problems = {}, []
    for n, item in enumerate(items):
        where = f"{path}: waivers[{n}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: must be a mapping with check and reason")
            continue
        check, reason = item.get("check"), item.get("reason")
        if check not in CHECK_IDS:
            problems.append(f"{where}.check: {check!r} is not a check id (one of {', '.join(sorted(CHECK_IDS))})")
        elif check in waivers:
            problems.append(f"{where}.check: {check} is waived twice")
        if not isinstance(reason, str) or len(reason.strip()) < 10:
            problems.append(f"{where}.reason: must say why (at least 10 characters)")
        if not any(p.startswith(where) for p in problems):
            waivers[str(check)] = str(reason).strip()
    if problems:
        raise ConfigError(problems)
    return waivers


@dataclass(frozen=True)
class SecuritySource:
    """Where the security suite's package index lives (e.g. deb.debian.org/debian-security bookworm-security)."""

    mirror: str
    suite: str
    arch: str
    components: tuple[str, ...] = ("main",)

    def describe(self) -> str:
        return f"{self.mirror} {self.suite}"


def fetch_security_index(source: SecuritySource) -> dict[tuple[str, str], str]:
    """(package, arch) -> newest version in the suite's ``Packages`` index (xz, else gz), bounded in
    size and time (a mirror is outside input)."""
    index: dict[tuple[str, str], str] = {}
    session = requests.Session()
    for component in source.components:
        base = f"{source.mirror.rstrip('/')}/dists/{source.suite}/{component}/binary-{source.arch}/Packages"
        text = None
        for suffix, compression in ((".xz", "xz"), (".gz", "gz")):
            response = get_capped(session, base + suffix, timeout=FETCH_TIMEOUT, limit=MAX_COMPRESSED_INDEX_BYTES)
            if response.status_code == 404:
                continue
            if response.status_code != 200:
                raise requests.HTTPError(f"{base}{suffix}: HTTP {response.status_code}")
            try:
                text = debian_index.decompress_checked(response.content, compression).decode("utf-8", "replace")
            except debian_index.BadIndex as e:
                raise requests.RequestException(f"{base}{suffix}: {e}") from e
            break
        if text is None:
            raise requests.HTTPError(f"{base}.xz and .gz: not found")
        for name, arch, version in debian_index.iter_versions(text):
            key = (name, arch or source.arch)
            if key not in index or debian_index.newer(version, index[key]):
                index[key] = version
    return index


def audit_disk(
    disk: Path,
    fmt: str,
    *,
    scratch: Path,
    packages: tuple[InstalledPackage, ...] | None,
    security: SecuritySource | None,
    waivers: Mapping[str, str] | None = None,
    appliance: str = "",
    version: str = "",
    waivers_file: str | None = None,
    disk_sha256: str | None = None,
    unattended_upgrades: bool = False,
) -> AuditReport:
    """Run every policy check against ``disk`` (declared format ``fmt``) and apply ``waivers``;
    ``unattended_upgrades`` is what the appliance declares (the image must match it)."""
    started = time.monotonic()
    waivers = waivers or {}
    ctx_kwargs: dict[str, Any] = {}
    if security is None:
        ctx_kwargs["security_error"] = "no security suite is known for this operating system"
    else:
        ctx_kwargs["security_source"] = security.describe()
        try:
            with step(f"fetch the {security.suite} package index"):
                ctx_kwargs["security_index"] = fetch_security_index(security)
        except (requests.RequestException, OSError) as e:
            ctx_kwargs["security_error"] = f"{security.describe()}: {e}"
    results = []
    with step(f"open {disk.name} read-only ({fmt})"), open_root(disk, fmt, scratch) as (root, info):
        results.append(
            CheckResult("disk-format", "disk opened with its declared format", CheckStatus.PASS, (info.describe(),))
        )
        ctx = AuditContext(root, packages, unattended_upgrades=unattended_upgrades, **ctx_kwargs)
        for check in CHECKS:
            finding = check.run(ctx)
            status = CheckStatus.PASS if finding.ok else CheckStatus.FAIL
            reason = waivers.get(check.id) if not finding.ok else None
            if reason:
                status = CheckStatus.WAIVED
            results.append(CheckResult(check.id, check.title, status, finding.evidence, reason))
            log.debug("%s %s", status, check.id)
    return AuditReport(
        appliance,
        version,
        str(disk),
        dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        tuple(results),
        round(time.monotonic() - started, 2),
        waivers_file,
        disk_sha256,
        tuple(sorted(waivers.items())),
    )


def security_source(appliance: Appliance, arch: str) -> SecuritySource | None:
    """The security suite an appliance's packages come from (Debian-based appliances)."""
    if appliance.os.name.lower() != "debian" or not appliance.os.codename:
        return None
    mirror = DEFAULT_SECURITY_MIRROR
    components: tuple[str, ...] = ("main",)
    if appliance.base.kind == BaseKind.BOOTSTRAP and appliance.base.bootstrap is not None:
        mirror = appliance.base.bootstrap.security_mirror
        components = appliance.base.bootstrap.components
    return SecuritySource(mirror, f"{appliance.os.codename}-security", DEBIAN_ARCH.get(arch, arch), components)


def audit_version(settings: Settings, name: str, version: str | None = None, store: bool = True) -> AuditReport:
    """Audit a built version's disk; writes ``<version_dir>/audit.json`` and (``store``) stores the report
    with the version in the catalogue when it is registered there. A failing check is in the report, not
    raised. The recipe and ``invoke endorse`` audit with ``store=False`` (``audit_and_record``): they store
    the report themselves, on the catalogue they already hold open (publish's, endorse's)."""
    appliance = find_appliance(settings.templates_dir, name, settings.provisioners_dir)
    version_dir, manifest = find_version(settings.output_dir, name, version)
    return audit_and_record(settings, appliance, version_dir, manifest, store)


def audit_and_record(
    settings: Settings, appliance: Appliance, version_dir: Path, manifest: BuildManifest, store: bool = True
) -> AuditReport:
    """``audit_version`` for a version already loaded (the recipe's audit step)."""
    report = audit_build(settings, appliance, version_dir, manifest)
    write_text_atomic(version_dir / AUDIT_FILE, json.dumps(report.to_dict(), indent=2) + "\n")
    log.info("audit report written to %s", version_dir / AUDIT_FILE)
    if store:
        store_if_registered(settings, report)
    return report


def store_if_registered(settings: Settings, report: AuditReport) -> bool:
    """Store the report with its version in the catalogue; False when the version is not registered yet
    (an audit before publish: ``invoke endorse`` stores it later)."""
    from pipeline.catalogue.client import open_catalogue

    catalogue = open_catalogue(settings)
    try:
        if catalogue.get_version(report.appliance, report.version) is None:
            log.info(
                "%s %s is not in the catalogue yet: audit kept in audit.json only", report.appliance, report.version
            )
            return False
        catalogue.store_audit(report.appliance, report.version, report.to_dict())
        log.info("audit stored with %s %s in the catalogue", report.appliance, report.version)
        return True
    except CatalogueError as e:  # the audit stands on its own; `invoke endorse` stores it again
        log.warning("audit not stored in the catalogue: %s", e)
        return False
    finally:
        catalogue.close()


def audit_build(settings: Settings, appliance: Appliance, version_dir: Path, manifest: BuildManifest) -> AuditReport:
    """Audit the build disk a manifest records, with the appliance's waivers (writes nothing)."""
    disk = manifest.artifact("build-disk")
    waivers_path = appliance.directory / WAIVERS_FILE
    waivers = load_waivers(waivers_path)
    return audit_disk(
        version_dir / disk.name,
        disk.format,
        scratch=settings.work_dir / "audit",
        packages=manifest.packages,
        security=security_source(appliance, manifest.arch),
        waivers=waivers,
        appliance=manifest.appliance,
        version=manifest.version,
        waivers_file=str(waivers_path) if waivers else None,
        disk_sha256=disk.sha256,
        unattended_upgrades=appliance.unattended_upgrades,
    )


def recent_audit(
    appliance: Appliance, version_dir: Path, manifest: BuildManifest, max_age: dt.timedelta
) -> dict[str, Any] | None:
    """The saved ``audit.json`` if it audited the current build disk with today's waivers within ``max_age``."""
    path = version_dir / AUDIT_FILE
    try:
        saved = json.loads(path.read_text())
        audited = dt.datetime.strptime(saved["audited_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except (FileNotFoundError, json.JSONDecodeError, KeyError, ValueError):
        return None
    fresh = dt.datetime.now(dt.UTC) - audited <= max_age
    same_disk = saved.get("disk_sha256") == manifest.artifact("build-disk").sha256
    same_waivers = saved.get("waivers") == load_waivers(appliance.directory / WAIVERS_FILE)
    return saved if fresh and same_disk and same_waivers else None
