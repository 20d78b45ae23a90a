"""Audits per user with the role they were stored in; every API token expires; a write generation.

- ``audit_reports``: one audit per (version, user) instead of one per version, and ``stored_as``
  (admin | endorser | maintainer) so a maintainer's own audit is kept but never gates endorsement.
  Existing audits get the role their user holds now.
- ``api_tokens.expires``: required. Tokens that never expired get 90 days from the upgrade.
- ``catalogue_state``: one row whose ``generation`` goes up with every write (ETags, list caches).

Revision ID: 0002_audit_roles_token_expiry
Revises: 0001_initial
Create Date: 2026-12-02 05:30:00
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "0002_audit_roles_token_expiry"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_TOKEN_DAYS = 90


def upgrade() -> None:
    state = op.create_table(
        "catalogue_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalogue_state")),
    )
    op.bulk_insert(state, [{"id": 1, "generation": 1}])
    with op.batch_alter_table("audit_reports", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stored_as", sa.String(length=16), nullable=False, server_default="maintainer"))
        batch_op.drop_constraint("uq_audit_reports_version_id", type_="unique")
        batch_op.create_unique_constraint("uq_audit_reports_version_stored_by", ["version_id", "stored_by_id"])
    op.execute(
        "UPDATE audit_reports SET stored_as = 'endorser' WHERE stored_by_id IN (SELECT user_id FROM vo_managers)"
    )
    op.execute(
        "UPDATE audit_reports SET stored_as = 'admin' WHERE stored_by_id IN (SELECT id FROM users WHERE role = 'admin')"
    )
    with op.batch_alter_table("audit_reports", schema=None) as batch_op:
        batch_op.alter_column("stored_as", server_default=None)

    until = (datetime.now(UTC) + timedelta(days=DEFAULT_TOKEN_DAYS)).replace(tzinfo=None, microsecond=0)
    op.get_bind().execute(sa.text("UPDATE api_tokens SET expires = :until WHERE expires IS NULL"), {"until": until})
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.alter_column("expires", existing_type=sa.DateTime(), nullable=False)


def downgrade() -> None:
    op.drop_table("catalogue_state")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.alter_column("expires", existing_type=sa.DateTime(), nullable=True)
    # keep one audit per version again: the newest that could gate endorsement, else the newest
    op.execute(
        """
        DELETE FROM audit_reports WHERE id NOT IN (
            SELECT id FROM (
                SELECT id, ROW_NUMBER() OVER (
                    PARTITION BY version_id
                    ORDER BY CASE WHEN stored_as = 'maintainer' THEN 1 ELSE 0 END, stored DESC, id DESC
                ) AS rank FROM audit_reports
            ) AS ranked WHERE rank = 1
        )
        """
    )
    with op.batch_alter_table("audit_reports", schema=None) as batch_op:
        batch_op.drop_constraint("uq_audit_reports_version_stored_by", type_="unique")
        batch_op.create_unique_constraint("uq_audit_reports_version_id", ["version_id"])
        batch_op.drop_column("stored_as")
