"""Every query the catalogue makes, and nothing else (Cosmic Python's repository).

The repository adds and finds objects in the unit of work's session; it never commits. Lists are
paged with a limit the caller has already capped.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session, defer, selectinload

from pipeline.catalogue.models import (
    ApiToken,
    Appliance,
    AuditReport,
    Endorsement,
    Image,
    ImageListVersion,
    ImagePackage,
    User,
    Version,
    Vo,
)

# Lists never show manifests or audit reports (large JSON), nor package lists: each relation a view
# needs is loaded by one extra query for the whole page (selectinload), never one per row.
_VERSION_LOADS = (
    selectinload(Version.images).defer(Image.manifest),
    selectinload(Version.endorsements),
    selectinload(Version.audits).load_only(AuditReport.stored, AuditReport.stored_as, AuditReport.passed),
    selectinload(Version.appliance),
)


class Repository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, obj: object) -> None:
        self.session.add(obj)

    def delete(self, obj: object) -> None:
        self.session.delete(obj)

    def flush(self) -> None:
        self.session.flush()

    # users and tokens ---------------------------------------------------------------------------

    def user(self, name: str) -> User | None:
        return self.session.scalar(select(User).where(User.name == name))

    def users(self, offset: int, limit: int) -> Sequence[User]:
        return self.session.scalars(select(User).order_by(User.name).offset(offset).limit(limit)).all()

    def count_users(self) -> int:
        return self.session.scalar(select(func.count()).select_from(User)) or 0

    def token(self, public_id: str) -> ApiToken | None:
        return self.session.scalar(select(ApiToken).where(ApiToken.public_id == public_id))

    def tokens_of(self, user: User) -> Sequence[ApiToken]:
        return self.session.scalars(select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id)).all()

    # VOs ----------------------------------------------------------------------------------------

    def vo(self, name: str, for_update: bool = False) -> Vo | None:
        query = select(Vo).where(Vo.name == name)
        if for_update:
            query = query.with_for_update()  # serialises image-list versions of one VO (PostgreSQL)
        return self.session.scalar(query)

    def vos(self, offset: int, limit: int) -> Sequence[Vo]:
        return self.session.scalars(
            select(Vo).options(selectinload(Vo.managers)).order_by(Vo.name).offset(offset).limit(limit)
        ).all()

    def count_vos(self) -> int:
        return self.session.scalar(select(func.count()).select_from(Vo)) or 0

    def vos_managed_by(self, user: User) -> Sequence[Vo]:
        return self.session.scalars(select(Vo).where(Vo.managers.any(User.id == user.id)).order_by(Vo.name)).all()

    # appliances and versions --------------------------------------------------------------------

    def appliance(self, name: str) -> Appliance | None:
        return self.session.scalar(
            select(Appliance)
            .where(Appliance.name == name)
            .options(selectinload(Appliance.maintainers), selectinload(Appliance.vos))
        )

    def appliances(self, offset: int, limit: int) -> Sequence[Appliance]:
        return self.session.scalars(
            select(Appliance)
            .options(selectinload(Appliance.maintainers), selectinload(Appliance.vos), selectinload(Appliance.owner))
            .order_by(Appliance.name)
            .offset(offset)
            .limit(limit)
        ).all()

    def count_appliances(self) -> int:
        return self.session.scalar(select(func.count()).select_from(Appliance)) or 0

    def version(self, appliance: Appliance, version: str) -> Version | None:
        return self.session.scalar(
            select(Version)
            .where(Version.appliance_id == appliance.id, Version.version == version)
            .options(*_VERSION_LOADS)
        )

    def versions(self, appliance: Appliance, offset: int, limit: int) -> Sequence[Version]:
        return self.session.scalars(
            select(Version)
            .where(Version.appliance_id == appliance.id)
            .options(*_VERSION_LOADS)
            .order_by(Version.created.desc(), Version.id.desc())
            .offset(offset)
            .limit(limit)
        ).all()

    def count_versions(self, appliance: Appliance) -> int:
        query = select(func.count()).select_from(Version).where(Version.appliance_id == appliance.id)
        return self.session.scalar(query) or 0

    def live_version_names(self, appliance: Appliance) -> Sequence[str]:
        """Names of the versions not archived (the caller picks the newest by version order)."""
        query = select(Version.version).where(Version.appliance_id == appliance.id, Version.archived.is_(False))
        return self.session.scalars(query).all()

    def versions_based_on(self, refs: Sequence[str]) -> Sequence[Version]:
        """Versions layered directly on one of ``refs`` (``"<appliance>@<version>"``, as in ``base_ref``)."""
        query = select(Version).where(Version.base_ref.in_(refs)).options(*_VERSION_LOADS).order_by(Version.id)
        return self.session.scalars(query).all() if refs else []

    def build_images(self, version: Version) -> Sequence[Image]:
        """A version's images with their manifests and package lists (reading back what was built)."""
        return self.session.scalars(
            select(Image).where(Image.version_id == version.id).options(selectinload(Image.packages)).order_by(Image.id)
        ).all()

    def image_with_packages(self, version: Version, image_id: int) -> Image | None:
        return self.session.scalar(
            select(Image)
            .where(Image.version_id == version.id, Image.id == image_id)
            .options(selectinload(Image.packages))
        )

    def images_with_packages(self, version: Version) -> Sequence[Image]:
        return self.session.scalars(
            select(Image).where(Image.version_id == version.id).options(selectinload(Image.packages)).order_by(Image.id)
        ).all()

    def package_counts(self, version: Version) -> dict[int, int]:
        """Image id -> number of packages, for one version (one grouped query, no package rows)."""
        rows = self.session.execute(
            select(ImagePackage.image_id, func.count())
            .join(Image, Image.id == ImagePackage.image_id)
            .where(Image.version_id == version.id)
            .group_by(ImagePackage.image_id)
        ).all()
        return {image_id: count for image_id, count in rows}

    def images(self, offset: int, limit: int) -> Sequence[Image]:
        return self.session.scalars(
            select(Image)
            .options(defer(Image.manifest), selectinload(Image.version).selectinload(Version.appliance))
            .order_by(Image.id)
            .offset(offset)
            .limit(limit)
        ).all()

    def count_images(self) -> int:
        return self.session.scalar(select(func.count()).select_from(Image)) or 0

    def audits(self, version: Version) -> Sequence[AuditReport]:
        """Every stored audit of a version, newest first, with its checks and who stored it."""
        return self.session.scalars(
            select(AuditReport)
            .where(AuditReport.version_id == version.id)
            .options(selectinload(AuditReport.checks))
            .order_by(AuditReport.stored.desc(), AuditReport.id.desc())
        ).all()

    def audit_by(self, version: Version, user: User) -> AuditReport | None:
        return self.session.scalar(
            select(AuditReport).where(AuditReport.version_id == version.id, AuditReport.stored_by_id == user.id)
        )

    # endorsements and image lists ---------------------------------------------------------------

    def endorsement(self, version: Version, vo: Vo) -> Endorsement | None:
        return self.session.scalar(
            select(Endorsement).where(Endorsement.version_id == version.id, Endorsement.vo_id == vo.id)
        )

    def endorsed_versions(self, vo: Vo) -> Sequence[Version]:
        """Versions with an endorsement for ``vo`` in force (the caller filters by expiry and archival)."""
        return self.session.scalars(
            select(Version)
            .join(Endorsement, Endorsement.version_id == Version.id)
            .where(Endorsement.vo_id == vo.id, Endorsement.revoked_at.is_(None))
            .options(*_VERSION_LOADS)
            .order_by(Version.id)
        ).all()

    def vos_endorsing(self, version: Version) -> Sequence[Vo]:
        return self.session.scalars(
            select(Vo)
            .join(Endorsement, Endorsement.vo_id == Vo.id)
            .where(Endorsement.version_id == version.id, Endorsement.revoked_at.is_(None))
            .order_by(Vo.name)
        ).all()

    def vos_with_endorsements(self) -> Sequence[Vo]:
        return self.session.scalars(
            select(Vo).where(select(Endorsement.id).where(Endorsement.vo_id == Vo.id).exists()).order_by(Vo.name)
        ).all()

    def latest_image_list(self, vo: Vo) -> ImageListVersion | None:
        return self.session.scalar(
            select(ImageListVersion)
            .where(ImageListVersion.vo_id == vo.id)
            .order_by(ImageListVersion.hv_version.desc())
            .limit(1)
        )

    def image_lists(self, vo: Vo, limit: int) -> Sequence[ImageListVersion]:
        return self.session.scalars(
            select(ImageListVersion)
            .where(ImageListVersion.vo_id == vo.id)
            .order_by(ImageListVersion.hv_version.desc())
            .limit(limit)
        ).all()
