"""Use cases of endorsement: endorse, revoke, archive, and the signed VO image lists they publish.

Each of these writes a new image list version in the same transaction as the change that caused it,
so a list and the endorsements it reflects can never disagree. ``hv:version`` only goes up; the newest
list is served, and re-published before it expires or when one of its versions expires.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from pipeline.catalogue import models as m
from pipeline.catalogue import views
from pipeline.catalogue.contract import (
    CascadeInfo,
    ImageListInfo,
    NotEndorsable,
    NotFound,
    PermissionDenied,
    RevokedEndorsement,
    VersionInfo,
)
from pipeline.catalogue.models import utcnow
from pipeline.catalogue.services import actor_user, find_appliance, find_version, find_vo, maintained
from pipeline.catalogue.settings import CatalogueSettings
from pipeline.catalogue.uow import UnitOfWork
from pipeline.manifest import version_sort_key


class ListSigner(Protocol):
    """Builds and signs one VO image list (``signing.ImageListSigner``, which loads the key at its first list)."""

    def sign(
        self, vo: str, versions: Sequence[VersionInfo], hv_version: int, created: datetime, expires: datetime
    ) -> bytes: ...


@dataclasses.dataclass(frozen=True)
class Context:
    """What every writing use case needs besides the unit of work."""

    settings: CatalogueSettings
    signer: ListSigner | None


def _endorsement_target(
    uow: UnitOfWork, actor: str, appliance: str, version: str, vo_name: str
) -> tuple[m.User, m.Vo, m.Version]:
    """Who acts, the VO (locked: its list versions are serialised) and the version; managers and admins only."""
    user = actor_user(uow, actor)
    vo = find_vo(uow, vo_name, for_update=True)
    if user.role is not m.Role.ADMIN and not any(u.id == user.id for u in vo.managers):
        raise PermissionDenied(f"{actor} is not a manager of VO {vo_name}")
    return user, vo, find_version(uow, find_appliance(uow, appliance), version)


def counting_audit(audits: Sequence[m.AuditReport], vo: m.Vo) -> m.AuditReport | None:
    """The newest audit (``audits`` is newest first) that may gate an endorsement for ``vo``: stored by
    an admin (the server's own in-process audits are the local admin's) or by a manager of ``vo``."""
    managers = {u.id for u in vo.managers}
    for audit in audits:
        if audit.stored_by.role is m.Role.ADMIN or audit.stored_by_id in managers:
            return audit
    return None


def endorse(uow: UnitOfWork, actor: str, appliance: str, version: str, vo_name: str, ctx: Context) -> ImageListInfo:
    """Endorse a version for a VO and publish the VO's next signed image list (one transaction)."""
    now = utcnow()
    with uow.writing():
        user, vo, v = _endorsement_target(uow, actor, appliance, version, vo_name)
        if v.archived or not v.published:
            raise NotEndorsable(f"{appliance} {version} is archived or unpublished")
        if v.expires <= now:
            raise NotEndorsable(f"{appliance} {version} expired on {v.expires:%Y-%m-%d}")
        audit = counting_audit(uow.repo.audits(v), vo)
        if audit is None:
            raise NotEndorsable(
                f"{appliance} {version} has no policy audit stored by an admin or a manager of VO {vo_name}",
                hint="a maintainer's own audit does not count: the endorser runs `invoke audit-image` and stores it",
            )
        if not audit.passed:
            failed = [c.check_id for c in audit.checks if c.result == "fail"]
            raise NotEndorsable(f"{appliance} {version} fails the policy audit: {', '.join(failed)}")
        row = uow.repo.endorsement(v, vo)
        if row is not None and row.revoked_at is None:
            latest = uow.repo.latest_image_list(vo)
            if latest is not None:
                return views.image_list_info(latest, vo.name, _list_url(ctx, vo.name))
        if row is None:
            row = m.Endorsement(version_id=v.id, vo_id=vo.id, endorsed_by_id=user.id, endorsed_at=now)
            uow.repo.add(row)
        row.endorsed_by_id, row.endorsed_at, row.revoked_at, row.revoked_by_id = user.id, now, None, None
        uow.repo.flush()
        info = _publish_list(uow, vo, ctx, now, f"endorse {appliance} {version}")
        uow.commit()
        return info


def revoke(uow: UnitOfWork, actor: str, appliance: str, version: str, vo_name: str, ctx: Context) -> ImageListInfo:
    """Withdraw an endorsement and publish the VO's next signed image list."""
    now = utcnow()
    with uow.writing():
        user, vo, v = _endorsement_target(uow, actor, appliance, version, vo_name)
        row = uow.repo.endorsement(v, vo)
        if row is None or row.revoked_at is not None:
            raise NotFound(f"{appliance} {version} is not endorsed for {vo_name}")
        row.revoked_at, row.revoked_by_id = now, user.id
        uow.repo.flush()
        info = _publish_list(uow, vo, ctx, now, f"revoke {appliance} {version}")
        uow.commit()
        return info


def revoke_cascade(
    uow: UnitOfWork, actor: str, appliance: str, version: str, vo_name: str, ctx: Context
) -> CascadeInfo:
    """Revoke a version for a VO and every version layered on it (directly or not) wherever those are
    endorsed, in one transaction: each VO concerned gets ONE new signed list. The caller must be an
    admin or manage every VO concerned; otherwise nothing is revoked."""
    now = utcnow()
    with uow.writing():
        user, vo, v = _endorsement_target(uow, actor, appliance, version, vo_name)
        row = uow.repo.endorsement(v, vo)
        if row is None:
            raise NotFound(f"{appliance} {version} was never endorsed for {vo_name}")
        rows = [(v, row)] if row.revoked_at is None else []  # already revoked: its descendants may not be
        layered = _descendants(uow, v)
        below = [(d, e) for d in layered for e in d.endorsements if e.revoked_at is None]
        rows += below
        if not rows:
            raise NotFound(f"{appliance} {version} and the {len(layered)} version(s) layered on it are not endorsed")
        names = sorted({e.vo.name for _, e in rows})
        vos = {name: find_vo(uow, name, for_update=True) for name in names}
        admin = user.role is m.Role.ADMIN
        denied = [n for n, o in vos.items() if not admin and all(u.id != user.id for u in o.managers)]
        if denied:
            raise PermissionDenied(
                f"{actor} is not a manager of VO {', '.join(denied)}, where versions layered on {appliance} "
                f"{version} are endorsed: nothing was revoked",
                hint="an admin or a manager of every VO concerned revokes with --cascade; or revoke without --cascade",
            )
        for _, e in rows:
            e.revoked_at, e.revoked_by_id = now, user.id
        uow.repo.flush()
        reason = f"revoke {appliance} {version} and {len(below)} endorsement(s) layered on it (cascade)"
        lists = [_publish_list(uow, vos[name], ctx, now, reason) for name in names]
        uow.commit()
        revoked = [RevokedEndorsement(appliance=d.appliance.name, version=d.version, vo=e.vo.name) for d, e in rows]
        return CascadeInfo(revoked=revoked, image_lists=lists)


def _descendants(uow: UnitOfWork, version: m.Version) -> list[m.Version]:
    """Every version layered on ``version``, directly or through other layered versions (by ``base_ref``)."""
    found: list[m.Version] = []
    seen = {version.id}
    frontier = [f"{version.appliance.name}@{version.version}"]
    while frontier:
        layer = [d for d in uow.repo.versions_based_on(frontier) if d.id not in seen]
        seen |= {d.id for d in layer}
        found += layer
        frontier = [f"{d.appliance.name}@{d.version}" for d in layer]
    return found


def archive_version(uow: UnitOfWork, actor: str, appliance: str, version: str, ctx: Context) -> list[ImageListInfo]:
    """Archive a version; every VO that endorsed it gets a new image list without it."""
    now = utcnow()
    with uow.writing():
        _, found = maintained(uow, actor, appliance)
        v = find_version(uow, found, version)
        if v.archived:
            return []
        v.archived, v.archived_at = True, now
        uow.repo.flush()
        infos = [
            _publish_list(uow, find_vo(uow, vo.name, for_update=True), ctx, now, f"archive {appliance} {version}")
            for vo in uow.repo.vos_endorsing(v)
        ]
        uow.commit()
        return infos


def _list_url(ctx: Context, vo: str) -> str:
    return f"{ctx.settings.image_list_base}/{vo}/image.list"


def _list_content(uow: UnitOfWork, vo: m.Vo, now: datetime) -> list[m.Version]:
    """Per appliance, the newest endorsed version that is published, not archived and not expired."""
    newest: dict[int, m.Version] = {}
    for v in uow.repo.endorsed_versions(vo):
        if v.archived or not v.published or v.expires <= now:
            continue
        held = newest.get(v.appliance_id)
        if held is None or (v.created, version_sort_key(v.version)) > (held.created, version_sort_key(held.version)):
            newest[v.appliance_id] = v
    return sorted(newest.values(), key=lambda v: v.appliance.name)


def _content_key(versions: Sequence[m.Version]) -> str:
    rows = sorted((v.identifier, i.identifier, i.sha512) for v in versions for i in v.images)
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def _publish_list(uow: UnitOfWork, vo: m.Vo, ctx: Context, now: datetime, reason: str) -> ImageListInfo:
    if ctx.signer is None:
        raise NotEndorsable(
            "the catalogue has no signing identity for image lists",
            hint="set VMI_SIGNING_KEY and VMI_SIGNING_CERT (paths; `invoke dev-ca` makes a throwaway pair)",
        )
    content = _list_content(uow, vo, now)
    previous = uow.repo.latest_image_list(vo)
    stamp = int(now.strftime("%Y%m%d%H%M%S"))
    hv_version = max(stamp, previous.hv_version + 1) if previous else stamp
    expires = now + ctx.settings.list_lifetime
    refresh = min([expires - ctx.settings.resign_margin, *(v.expires for v in content)])
    signed = ctx.signer.sign(vo.name, [views.version_info(v) for v in content], hv_version, now, expires)
    row = m.ImageListVersion(
        vo_id=vo.id,
        hv_version=hv_version,
        created=now,
        expires=expires,
        reason=reason[:200],
        content_key=_content_key(content),
        entries=sum(len(v.images) for v in content),
        refresh_after=refresh,
        signed=signed,
    )
    uow.repo.add(row)
    uow.repo.flush()
    return views.image_list_info(row, vo.name, _list_url(ctx, vo.name))


def current_image_list(uow: UnitOfWork, vo_name: str, ctx: Context) -> bytes:
    """The newest signed list of a VO; re-signed first when it is near expiry or an entry expired."""
    return current_image_list_until(uow, vo_name, ctx)[0]


def current_image_list_until(uow: UnitOfWork, vo_name: str, ctx: Context) -> tuple[bytes, datetime]:
    """The newest signed list of a VO (its stored bytes), and until when it may be served as is."""
    now = utcnow()
    with uow:
        vo = find_vo(uow, vo_name)
        latest = uow.repo.latest_image_list(vo)
        if latest is None:
            raise NotFound(f"VO {vo_name} has no image list yet", hint="a VO manager endorses a version first")
        if latest.refresh_after > now or ctx.signer is None:
            return latest.signed, latest.refresh_after if ctx.signer is not None else now
    refresh_image_list(uow, vo_name, ctx, now)
    with uow:
        latest = uow.repo.latest_image_list(find_vo(uow, vo_name))
        assert latest is not None
        return latest.signed, latest.refresh_after


def refresh_image_list(
    uow: UnitOfWork, vo_name: str, ctx: Context, now: datetime | None = None
) -> ImageListInfo | None:
    """Publish a new list if the newest one is due (near expiry, or an entry expired); else None."""
    now = now or utcnow()
    with uow.writing():
        vo = find_vo(uow, vo_name, for_update=True)
        latest = uow.repo.latest_image_list(vo)
        if latest is None or latest.refresh_after > now:
            return None  # another request refreshed it meanwhile
        changed = _content_key(_list_content(uow, vo, now)) != latest.content_key
        info = _publish_list(uow, vo, ctx, now, "an endorsed version expired" if changed else "re-sign before expiry")
        uow.commit()
        return info


def refresh_all_image_lists(uow: UnitOfWork, ctx: Context, now: datetime | None = None) -> list[ImageListInfo]:
    """What the service runs periodically: every due VO list is re-published."""
    with uow:
        names = [vo.name for vo in uow.repo.vos_with_endorsements()]
    return [info for name in names if (info := refresh_image_list(uow, name, ctx, now)) is not None]


def endorsed_for(uow: UnitOfWork, vo_name: str) -> list[VersionInfo]:
    """Versions with an endorsement for the VO in force (whether or not still listed)."""
    with uow:
        return [views.version_info(v) for v in uow.repo.endorsed_versions(find_vo(uow, vo_name))]


def image_list_history(uow: UnitOfWork, vo_name: str, ctx: Context, limit: int = 20) -> list[tuple[ImageListInfo, str]]:
    with uow:
        vo = find_vo(uow, vo_name)
        return [
            (views.image_list_info(r, vo.name, _list_url(ctx, vo.name)), r.reason)
            for r in uow.repo.image_lists(vo, limit)
        ]
