"""Retention and expiry: keep the newest N versions that have not expired; retire the rest safely.

Per appliance, a published version is kept while it is one of the newest ``rebuild.keep_versions``
and younger than its expiry. Anything else is archived in the catalogue first (it drops out of the VO
image lists: a new signed list), and only then are its objects deleted from the repository, so a
site never sees a list entry whose image is gone. A run killed between the two steps is completed by
the next: objects of versions that are already archived are deleted too. Versions that expire within
``WARN_DAYS`` are reported, oldest expiry first.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from pipeline.appliance import Appliance
from pipeline.catalogue.contract import EXPIRY_WARNING_DAYS, NotFound
from pipeline.errors import PipelineError
from pipeline.log import log
from pipeline.manifest import version_sort_key
from pipeline.rebuild.plan import format_table

WARN_DAYS = EXPIRY_WARNING_DAYS


# What retention needs of the catalogue and the repository (pipeline.catalogue / pipeline.repository
# implement these; retention uses nothing else of them).
class _Image(Protocol):
    @property
    def uri(self) -> str: ...


class VersionLike(Protocol):
    @property
    def version(self) -> str: ...
    @property
    def created(self) -> datetime: ...
    @property
    def expires(self) -> datetime: ...
    @property
    def archived(self) -> bool: ...
    @property
    def images(self) -> Sequence[_Image]: ...


class CatalogueLike(Protocol):
    def list_versions(self, appliance: str) -> Sequence[VersionLike]: ...
    def archive_version(self, appliance: str, version: str) -> None: ...


class _Object(Protocol):
    @property
    def key(self) -> str: ...


class RepositoryLike(Protocol):
    def head(self, key: str) -> object | None: ...
    def delete(self, key: str) -> None: ...
    def iter_objects(self, prefix: str = "") -> Iterator[_Object]: ...
    def key_for_url(self, url: str) -> str | None: ...


@dataclass(frozen=True)
class Retirement:
    appliance: str
    version: str
    reason: str


@dataclass(frozen=True)
class Expiring:
    appliance: str
    version: str
    expires: datetime
    days_left: float


@dataclass(frozen=True)
class RetentionPlan:
    keep: tuple[tuple[str, str], ...]
    retire: tuple[Retirement, ...]
    expiring: tuple[Expiring, ...]


def plan_retention(
    appliance: str, versions: Iterable[VersionLike], keep_versions: int, now: datetime, warn_days: int = WARN_DAYS
) -> RetentionPlan:
    """Which active versions of one appliance to keep, which to retire (and why), which expire soon."""
    active = sorted((v for v in versions if not v.archived), key=lambda v: version_sort_key(v.version), reverse=True)
    keep: list[tuple[str, str]] = []
    retire: list[Retirement] = []
    expiring: list[Expiring] = []
    for rank, v in enumerate(active):
        if v.expires <= now:
            retire.append(Retirement(appliance, v.version, f"expired {v.expires:%Y-%m-%d}"))
        elif rank >= keep_versions:
            newest = active[0].version
            retire.append(Retirement(appliance, v.version, f"superseded: {rank} newer versions (newest {newest})"))
        else:
            keep.append((appliance, v.version))
            left = v.expires - now
            if left <= timedelta(days=warn_days):
                expiring.append(Expiring(appliance, v.version, v.expires, left.total_seconds() / 86400))
    return RetentionPlan(tuple(keep), tuple(retire), tuple(expiring))


@dataclass
class RetentionReport:
    retired: list[Retirement] = field(default_factory=list)
    deleted: dict[str, list[str]] = field(default_factory=dict)  # "appliance version" -> keys
    expiring: list[Expiring] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        verb = "would retire" if self.dry_run else "retired"
        rows = [
            (r.appliance, r.version, verb, r.reason + _deleted(self.deleted.get(f"{r.appliance} {r.version}")))
            for r in self.retired
        ]
        rows += [
            (e.appliance, e.version, "expires soon", f"on {e.expires:%Y-%m-%d %H:%M}Z ({e.days_left:.1f} days left)")
            for e in self.expiring
        ]
        lines = ["retention: nothing to retire, nothing expiring soon"] if not rows else ["retention:"]
        if rows:
            lines.append(format_table(("appliance", "version", "action", "detail"), rows))
        lines += [f"retention error: {e}" for e in self.errors]
        return "\n".join(lines)


def _deleted(keys: list[str] | None) -> str:
    return f"; deleted {len(keys)} objects" if keys else ""


def apply_retention(
    appliances: Mapping[str, Appliance],
    catalogue: CatalogueLike,
    repository: RepositoryLike,
    now: datetime,
    dry_run: bool = False,
    mirrors: Sequence[RepositoryLike] = (),
) -> RetentionReport:
    """Archive, then delete (from the repository and every mirror publish wrote to); one appliance's
    failure is reported and does not stop the others."""
    report = RetentionReport(dry_run=dry_run)
    for name, appliance in sorted(appliances.items()):
        try:
            versions = list(catalogue.list_versions(name))
        except NotFound:
            continue  # never published: nothing to retire
        except PipelineError as e:
            report.errors.append(f"{name}: cannot list versions: {e.message}")
            continue
        plan = plan_retention(name, versions, appliance.rebuild.keep_versions, now)
        report.expiring += plan.expiring
        for soon in plan.expiring:
            log.warning(
                "%s %s expires on %s (in %.1f days): rebuild or extend it",
                soon.appliance,
                soon.version,
                f"{soon.expires:%Y-%m-%d}",
                soon.days_left,
            )
        by_version = {v.version: v for v in versions}
        for r in plan.retire:
            report.retired.append(r)
            if dry_run:
                continue
            try:
                catalogue.archive_version(name, r.version)
                log.info("%s %s archived in the catalogue (%s)", name, r.version, r.reason)
            except PipelineError as e:
                report.errors.append(f"{name} {r.version}: archiving failed, objects kept: {e.message}")
                continue
            for where in (repository, *mirrors):
                _delete_objects(report, where, by_version[r.version], name)
        if not dry_run:
            # objects left behind by a run that archived but was stopped before deleting
            for v in versions:
                if v.archived:
                    for where in (repository, *mirrors):
                        _delete_objects(report, where, v, name)
    return report


def _delete_objects(report: RetentionReport, repository: RepositoryLike, version: VersionLike, name: str) -> None:
    # every location of each image (publish to several repositories), else its uri
    urls = {u for i in version.images for u in (getattr(i, "locations", ()) or (i.uri,))}
    try:
        keys = {k for k in (repository.key_for_url(u) for u in sorted(urls)) if k and repository.head(k)}
        keys |= {o.key for o in repository.iter_objects(f"{name}/{version.version}/")}
        for key in sorted(keys):
            repository.delete(key)
    except PipelineError as e:
        report.errors.append(f"{name} {version.version}: deleting its objects failed: {e.message}")
        return
    if keys:
        report.deleted.setdefault(f"{name} {version.version}", []).extend(sorted(keys))
        log.info("%s %s: deleted %d objects from the repository", name, version.version, len(keys))
