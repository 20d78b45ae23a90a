"""The catalogue's tables (SQLAlchemy 2.0), after EGI AppDB's model.

The schema changes only through the Alembic migrations in ``migrations/``; a test proves that the
migrated schema matches these definitions. Times are stored as naive UTC and read back as aware UTC
(``UtcDateTime``), the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Enum,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, whatever the database keeps."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UtcDateTime(), dict[str, Any]: JSON()}


class Role(enum.StrEnum):
    ADMIN = "admin"
    USER = "user"


def _values(enum_class: type[enum.StrEnum]) -> list[str]:
    return [m.value for m in enum_class]


class AuditRole(enum.StrEnum):
    """In which capacity an audit was stored: only admins' and endorsers' audits gate endorsement."""

    ADMIN = "admin"
    ENDORSER = "endorser"
    MAINTAINER = "maintainer"


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str] = mapped_column(String(254))
    role: Mapped[Role] = mapped_column(Enum(Role, native_enum=False, length=16, values_callable=_values))
    created: Mapped[datetime]


class ApiToken(Base):
    """A token is ``vmi_<public id>_<secret>``; only the SHA-256 of the whole token is kept."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[str] = mapped_column(String(16), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(100))
    created: Mapped[datetime]
    expires: Mapped[datetime]  # every token expires (settings.token_days by default)
    revoked: Mapped[datetime | None]
    user: Mapped[User] = relationship(lazy="joined")


class VoManager(Base):
    __tablename__ = "vo_managers"
    vo_id: Mapped[int] = mapped_column(ForeignKey("vos.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)


class Vo(Base):
    __tablename__ = "vos"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created: Mapped[datetime]
    managers: Mapped[list[User]] = relationship(secondary="vo_managers", order_by="User.name")


class ApplianceMaintainer(Base):
    __tablename__ = "appliance_maintainers"
    appliance_id: Mapped[int] = mapped_column(ForeignKey("appliances.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)


class ApplianceVo(Base):
    __tablename__ = "appliance_vos"
    appliance_id: Mapped[int] = mapped_column(ForeignKey("appliances.id", ondelete="CASCADE"), primary_key=True)
    vo_id: Mapped[int] = mapped_column(ForeignKey("vos.id", ondelete="CASCADE"), primary_key=True)


class Appliance(Base):
    __tablename__ = "appliances"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created: Mapped[datetime]
    owner: Mapped[User] = relationship(foreign_keys=[owner_id])
    maintainers: Mapped[list[User]] = relationship(secondary="appliance_maintainers", order_by="User.name")
    vos: Mapped[list[Vo]] = relationship(secondary="appliance_vos", order_by="Vo.name")


class Version(Base):
    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("appliance_id", "version", name="uq_versions_appliance_version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    appliance_id: Mapped[int] = mapped_column(ForeignKey("appliances.id", ondelete="CASCADE"), index=True)
    version: Mapped[str] = mapped_column(String(20))
    identifier: Mapped[str] = mapped_column(String(36), unique=True)
    notes: Mapped[str] = mapped_column(Text)
    created: Mapped[datetime]
    expires: Mapped[datetime]
    published: Mapped[bool] = mapped_column(Boolean, default=True)
    archived: Mapped[bool] = mapped_column(Boolean, default=False)
    archived_at: Mapped[datetime | None]
    registered_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    payload_digest: Mapped[str] = mapped_column(String(64))  # sha256 of the registration payload
    # "<appliance>@<version>" a layered build records as its base (lineage reads this, never the manifest)
    base_ref: Mapped[str | None] = mapped_column(String(100), default=None)
    # sha256 of the version's SBOM (the bytes are in version_sboms), NULL: none stored (migration 0004)
    sbom_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    appliance: Mapped[Appliance] = relationship()
    images: Mapped[list[Image]] = relationship(
        back_populates="version", order_by="Image.id", cascade="all, delete-orphan"
    )
    endorsements: Mapped[list[Endorsement]] = relationship(order_by="Endorsement.id", cascade="all, delete-orphan")
    audits: Mapped[list[AuditReport]] = relationship(
        order_by="(AuditReport.stored.desc(), AuditReport.id.desc())", cascade="all, delete-orphan"
    )


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("version_id", "uri", "hypervisor", name="uq_images_version_uri"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"), index=True)
    identifier: Mapped[str] = mapped_column(String(36))  # stable across versions of one appliance
    uri: Mapped[str] = mapped_column(String(2048))
    format: Mapped[str] = mapped_column(String(16))
    hypervisor: Mapped[str] = mapped_column(String(32))
    size: Mapped[int] = mapped_column(BigInteger)
    sha512: Mapped[str] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(String(64))
    arch: Mapped[str] = mapped_column(String(16))
    os_family: Mapped[str] = mapped_column(String(32))
    os_name: Mapped[str] = mapped_column(String(64))
    os_version: Mapped[str] = mapped_column(String(32))
    min_cores: Mapped[int] = mapped_column(Integer)
    recommended_cores: Mapped[int] = mapped_column(Integer)
    min_ram_mb: Mapped[int] = mapped_column(Integer)
    recommended_ram_mb: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(String(200))
    integrity: Mapped[str] = mapped_column(String(16))  # contract.Integrity
    manifest: Mapped[dict[str, Any] | None]
    # every repository holding the image (publish to several), uri first; NULL: only uri (migration 0004)
    locations: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    version: Mapped[Version] = relationship(back_populates="images")
    packages: Mapped[list[ImagePackage]] = relationship(order_by="ImagePackage.name", cascade="all, delete-orphan")


class VersionSbom(Base):
    """A version's CycloneDX SBOM, byte for byte as published (read only by its download route)."""

    __tablename__ = "version_sboms"
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"), primary_key=True)
    media_type: Mapped[str] = mapped_column(String(100))
    data: Mapped[bytes] = mapped_column(LargeBinary)


class ImagePackage(Base):
    __tablename__ = "image_packages"
    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(200))
    arch: Mapped[str] = mapped_column(String(32))


class AuditReport(Base):
    """One user's latest policy audit of a version (storing a new one replaces that user's)."""

    __tablename__ = "audit_reports"
    __table_args__ = (UniqueConstraint("version_id", "stored_by_id", name="uq_audit_reports_version_stored_by"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"))
    stored: Mapped[datetime]
    stored_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    stored_as: Mapped[str] = mapped_column(String(16))  # AuditRole: admin | endorser | maintainer
    passed: Mapped[bool] = mapped_column(Boolean)  # every check passes or is waived
    report: Mapped[dict[str, Any]]
    stored_by: Mapped[User] = relationship(lazy="joined")
    checks: Mapped[list[AuditCheck]] = relationship(order_by="AuditCheck.id", cascade="all, delete-orphan")


class AuditCheck(Base):
    __tablename__ = "audit_checks"
    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("audit_reports.id", ondelete="CASCADE"), index=True)
    check_id: Mapped[str] = mapped_column(String(100))
    result: Mapped[str] = mapped_column(String(16))  # pass | fail | waived
    evidence: Mapped[str] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)  # why it was waived


class Endorsement(Base):
    __tablename__ = "endorsements"
    __table_args__ = (UniqueConstraint("version_id", "vo_id", name="uq_endorsements_version_vo"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"), index=True)
    vo_id: Mapped[int] = mapped_column(ForeignKey("vos.id", ondelete="CASCADE"), index=True)
    endorsed_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    endorsed_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    revoked_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    vo: Mapped[Vo] = relationship(lazy="joined")
    endorsed_by: Mapped[User] = relationship(foreign_keys=[endorsed_by_id], lazy="joined")


class ImageListVersion(Base):
    """One signed VO image list; ``hv_version`` only goes up, the newest is served."""

    __tablename__ = "image_list_versions"
    __table_args__ = (UniqueConstraint("vo_id", "hv_version", name="uq_image_list_versions_vo_hv"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    vo_id: Mapped[int] = mapped_column(ForeignKey("vos.id", ondelete="CASCADE"), index=True)
    hv_version: Mapped[int] = mapped_column(BigInteger)
    created: Mapped[datetime]
    expires: Mapped[datetime]
    reason: Mapped[str] = mapped_column(String(200))  # what produced it: endorse, revoke, archive, expiry, re-sign
    content_key: Mapped[str] = mapped_column(String(64))  # sha256 of the sorted entries: detects drift
    entries: Mapped[int] = mapped_column(Integer)
    refresh_after: Mapped[datetime]  # re-sign before expiry, or an entry's version expires
    signed: Mapped[bytes] = mapped_column(LargeBinary)


class CatalogueState(Base):
    """One row: ``generation`` goes up with every committed write (``UnitOfWork.commit``).

    Readers key cached list responses and their ETags on it, so a write by any process (the service,
    an in-process publish on the same database) makes every cached list stale at once.
    """

    __tablename__ = "catalogue_state"
    id: Mapped[int] = mapped_column(primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger)
