"""Every repository holding an image (``images.locations``) and the version's SBOM (``version_sboms``).

``images.locations``: a JSON list, the image's ``uri`` first.

Publish can write a version to several repositories (``VMI_REPOSITORY="s3://... oci://..."``); the
catalogue records each location, while ``uri`` (the primary repository's) stays what the signed image
lists carry. NULL for images registered before: their only location is ``uri``.

``version_sboms`` holds each version's CycloneDX SBOM byte for byte (served by
``GET /api/v1/appliances/{name}/versions/{version}/sbom``); ``versions.sbom_sha256`` says whether there
is one without reading it (the version page keeps its fixed queries). NULL for versions registered before.

Revision ID: 0004_locations_and_sbom
Revises: 0003_version_base_ref
Create Date: 2026-12-02 11:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_locations_and_sbom"
down_revision: str | None = "0003_version_base_ref"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# A plain ALTER TABLE (never SQLite's batch copy, which would cascade deletes from images to packages).
def upgrade() -> None:
    op.add_column("images", sa.Column("locations", sa.JSON(), nullable=True))
    op.add_column("versions", sa.Column("sbom_sha256", sa.String(length=64), nullable=True))
    op.create_table(
        "version_sboms",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("media_type", sa.String(length=100), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"], ["versions.id"], name=op.f("fk_version_sboms_version_id_versions"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("version_id", name=op.f("pk_version_sboms")),
    )


def downgrade() -> None:
    op.drop_table("version_sboms")
    op.drop_column("versions", "sbom_sha256")
    op.drop_column("images", "locations")
