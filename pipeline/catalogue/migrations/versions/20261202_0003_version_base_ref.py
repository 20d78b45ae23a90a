"""A layered version's base in its own column: ``versions.base_ref`` ("<appliance>@<version>").

Lineage (the version page and the version JSON) reads this column, never the build manifests, so the
version page keeps its fixed set of queries with no manifest read. Existing versions get the base their
first image's manifest records (``{"base": {"kind": "appliance", "ref": ...}}``), else NULL.

Revision ID: 0003_version_base_ref
Revises: 0002_audit_roles_token_expiry
Create Date: 2026-12-02 06:45:00
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003_version_base_ref"
down_revision: str | None = "0002_audit_roles_token_expiry"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _loaded(manifest: Any) -> Any:
    if isinstance(manifest, str | bytes):  # SQLite hands JSON back as text
        try:
            return json.loads(manifest)
        except ValueError:
            return None
    return manifest


def _base_ref(manifest: Any) -> str | None:
    base = manifest.get("base") if isinstance(manifest, dict) else None
    if not isinstance(base, dict) or base.get("kind") != "appliance":
        return None
    name, at, version = str(base.get("ref", "")).partition("@")
    return f"{name}@{version}" if at and name and version and len(name) + len(version) < 100 else None


# Plain ALTER TABLE, never SQLite's batch copy: dropping the old ``versions`` table would cascade to its
# images, endorsements and audits (foreign keys are on). SQLite adds and drops a plain column in place.


def upgrade() -> None:
    op.add_column("versions", sa.Column("base_ref", sa.String(length=100), nullable=True))
    bind = op.get_bind()
    rows = bind.execute(
        sa.text("SELECT version_id, manifest FROM images WHERE manifest IS NOT NULL ORDER BY version_id, id")
    )
    found: dict[int, str | None] = {}
    for version_id, stored in rows:
        manifest = _loaded(stored)
        if version_id not in found and manifest:  # the first image with a manifest, as at registration
            found[version_id] = _base_ref(manifest)
    for version_id, ref in found.items():
        if ref is not None:
            bind.execute(sa.text("UPDATE versions SET base_ref = :ref WHERE id = :id"), {"ref": ref, "id": version_id})


def downgrade() -> None:
    op.drop_column("versions", "base_ref")
