"""Initial schema: users, tokens, VOs, appliances, versions, images, audits, endorsements, image lists.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-22 00:24:59.284922
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("role", sa.Enum("admin", "user", name="role", native_enum=False, length=16), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("name", name=op.f("uq_users_name")),
    )
    op.create_table(
        "vos",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vos")),
        sa.UniqueConstraint("name", name=op.f("uq_vos_name")),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("public_id", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=100), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("expires", sa.DateTime(), nullable=True),
        sa.Column("revoked", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_api_tokens_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("public_id", name=op.f("uq_api_tokens_public_id")),
    )
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_tokens_user_id"), ["user_id"], unique=False)

    op.create_table(
        "appliances",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"], name=op.f("fk_appliances_owner_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_appliances")),
        sa.UniqueConstraint("name", name=op.f("uq_appliances_name")),
    )
    op.create_table(
        "image_list_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("vo_id", sa.Integer(), nullable=False),
        sa.Column("hv_version", sa.BigInteger(), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("expires", sa.DateTime(), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("content_key", sa.String(length=64), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("refresh_after", sa.DateTime(), nullable=False),
        sa.Column("signed", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["vo_id"], ["vos.id"], name=op.f("fk_image_list_versions_vo_id_vos"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_image_list_versions")),
        sa.UniqueConstraint("vo_id", "hv_version", name="uq_image_list_versions_vo_hv"),
    )
    with op.batch_alter_table("image_list_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_image_list_versions_vo_id"), ["vo_id"], unique=False)

    op.create_table(
        "vo_managers",
        sa.Column("vo_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_vo_managers_user_id_users"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["vo_id"], ["vos.id"], name=op.f("fk_vo_managers_vo_id_vos"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("vo_id", "user_id", name=op.f("pk_vo_managers")),
    )
    op.create_table(
        "appliance_maintainers",
        sa.Column("appliance_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["appliance_id"],
            ["appliances.id"],
            name=op.f("fk_appliance_maintainers_appliance_id_appliances"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_appliance_maintainers_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("appliance_id", "user_id", name=op.f("pk_appliance_maintainers")),
    )
    op.create_table(
        "appliance_vos",
        sa.Column("appliance_id", sa.Integer(), nullable=False),
        sa.Column("vo_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["appliance_id"],
            ["appliances.id"],
            name=op.f("fk_appliance_vos_appliance_id_appliances"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["vo_id"], ["vos.id"], name=op.f("fk_appliance_vos_vo_id_vos"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("appliance_id", "vo_id", name=op.f("pk_appliance_vos")),
    )
    op.create_table(
        "versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("appliance_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=20), nullable=False),
        sa.Column("identifier", sa.String(length=36), nullable=False),
        sa.Column("notes", sa.Text(), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("expires", sa.DateTime(), nullable=False),
        sa.Column("published", sa.Boolean(), nullable=False),
        sa.Column("archived", sa.Boolean(), nullable=False),
        sa.Column("archived_at", sa.DateTime(), nullable=True),
        sa.Column("registered_by_id", sa.Integer(), nullable=False),
        sa.Column("payload_digest", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["appliance_id"], ["appliances.id"], name=op.f("fk_versions_appliance_id_appliances"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["registered_by_id"], ["users.id"], name=op.f("fk_versions_registered_by_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_versions")),
        sa.UniqueConstraint("appliance_id", "version", name="uq_versions_appliance_version"),
        sa.UniqueConstraint("identifier", name=op.f("uq_versions_identifier")),
    )
    with op.batch_alter_table("versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_versions_appliance_id"), ["appliance_id"], unique=False)

    op.create_table(
        "audit_reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("stored", sa.DateTime(), nullable=False),
        sa.Column("stored_by_id", sa.Integer(), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["stored_by_id"], ["users.id"], name=op.f("fk_audit_reports_stored_by_id_users")),
        sa.ForeignKeyConstraint(
            ["version_id"], ["versions.id"], name=op.f("fk_audit_reports_version_id_versions"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_reports")),
        sa.UniqueConstraint("version_id", name=op.f("uq_audit_reports_version_id")),
    )
    op.create_table(
        "endorsements",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("vo_id", sa.Integer(), nullable=False),
        sa.Column("endorsed_by_id", sa.Integer(), nullable=False),
        sa.Column("endorsed_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.Column("revoked_by_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["endorsed_by_id"], ["users.id"], name=op.f("fk_endorsements_endorsed_by_id_users")),
        sa.ForeignKeyConstraint(["revoked_by_id"], ["users.id"], name=op.f("fk_endorsements_revoked_by_id_users")),
        sa.ForeignKeyConstraint(
            ["version_id"], ["versions.id"], name=op.f("fk_endorsements_version_id_versions"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["vo_id"], ["vos.id"], name=op.f("fk_endorsements_vo_id_vos"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_endorsements")),
        sa.UniqueConstraint("version_id", "vo_id", name="uq_endorsements_version_vo"),
    )
    with op.batch_alter_table("endorsements", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_endorsements_version_id"), ["version_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_endorsements_vo_id"), ["vo_id"], unique=False)

    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("identifier", sa.String(length=36), nullable=False),
        sa.Column("uri", sa.String(length=2048), nullable=False),
        sa.Column("format", sa.String(length=16), nullable=False),
        sa.Column("hypervisor", sa.String(length=32), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha512", sa.String(length=128), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("arch", sa.String(length=16), nullable=False),
        sa.Column("os_family", sa.String(length=32), nullable=False),
        sa.Column("os_name", sa.String(length=64), nullable=False),
        sa.Column("os_version", sa.String(length=32), nullable=False),
        sa.Column("min_cores", sa.Integer(), nullable=False),
        sa.Column("recommended_cores", sa.Integer(), nullable=False),
        sa.Column("min_ram_mb", sa.Integer(), nullable=False),
        sa.Column("recommended_ram_mb", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("integrity", sa.String(length=16), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["version_id"], ["versions.id"], name=op.f("fk_images_version_id_versions"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_images")),
        sa.UniqueConstraint("version_id", "uri", "hypervisor", name="uq_images_version_uri"),
    )
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_images_version_id"), ["version_id"], unique=False)

    op.create_table(
        "audit_checks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("report_id", sa.Integer(), nullable=False),
        sa.Column("check_id", sa.String(length=100), nullable=False),
        sa.Column("result", sa.String(length=16), nullable=False),
        sa.Column("evidence", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["report_id"],
            ["audit_reports.id"],
            name=op.f("fk_audit_checks_report_id_audit_reports"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_checks")),
    )
    with op.batch_alter_table("audit_checks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_checks_report_id"), ["report_id"], unique=False)

    op.create_table(
        "image_packages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=200), nullable=False),
        sa.Column("arch", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name=op.f("fk_image_packages_image_id_images"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_image_packages")),
    )
    with op.batch_alter_table("image_packages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_image_packages_image_id"), ["image_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("image_packages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_image_packages_image_id"))

    op.drop_table("image_packages")
    with op.batch_alter_table("audit_checks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_checks_report_id"))

    op.drop_table("audit_checks")
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_images_version_id"))

    op.drop_table("images")
    with op.batch_alter_table("endorsements", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_endorsements_vo_id"))
        batch_op.drop_index(batch_op.f("ix_endorsements_version_id"))

    op.drop_table("endorsements")
    op.drop_table("audit_reports")
    with op.batch_alter_table("versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_versions_appliance_id"))

    op.drop_table("versions")
    op.drop_table("appliance_vos")
    op.drop_table("appliance_maintainers")
    op.drop_table("vo_managers")
    with op.batch_alter_table("image_list_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_image_list_versions_vo_id"))

    op.drop_table("image_list_versions")
    op.drop_table("appliances")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_tokens_user_id"))

    op.drop_table("api_tokens")
    op.drop_table("vos")
    op.drop_table("users")
