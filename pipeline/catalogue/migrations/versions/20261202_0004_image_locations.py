"""Every repository holding an image: ``images.locations`` (JSON list, the image's ``uri`` first).

Publish can write a version to several repositories (``VMI_REPOSITORY="s3://... oci://..."``); the
catalogue records each location, while ``uri`` (the primary repository's) stays what the signed image
lists carry. NULL for images registered before: their only location is ``uri``.

Revision ID: 0004_image_locations
Revises: 0003_version_base_ref
Create Date: 2026-12-02 11:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_image_locations"
down_revision: str | None = "0003_version_base_ref"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# A plain ALTER TABLE (never SQLite's batch copy, which would cascade deletes from images to packages).
def upgrade() -> None:
    op.add_column("images", sa.Column("locations", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("images", "locations")
