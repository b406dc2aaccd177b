"""Bundle versions: a bundle is named by its name and version, each created once.

Bundles made before this revision had no version and names could repeat; each keeps
its row id as its version, so every existing (name, version) is unique.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Adds ``release_bundle.version`` and the unique (name, version) constraint."""
    with op.batch_alter_table("release_bundle") as table:
        table.add_column(
            sa.Column("version", sa.String(length=64), nullable=False, server_default="1")
        )
    op.execute("UPDATE release_bundle SET version = CAST(id AS VARCHAR(64))")
    with op.batch_alter_table("release_bundle") as table:
        table.create_unique_constraint("uq_release_bundle_name_version", ["name", "version"])


def downgrade() -> None:
    """Drops the constraint and the version column."""
    with op.batch_alter_table("release_bundle") as table:
        table.drop_constraint("uq_release_bundle_name_version", type_="unique")
        table.drop_column("version")
