"""Image provenance: who uploaded each image and who signed the metadata that added it.

Images published before this revision keep empty signing fields and a placeholder
uploader: the server did not record them.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

_UNKNOWN_UPLOADER = "unknown (before revision 0004)"


def upgrade() -> None:
    """Adds the uploader and signer columns to ``release_image``."""
    with op.batch_alter_table("release_image") as table:
        table.add_column(
            sa.Column(
                "uploaded_by",
                sa.String(length=64),
                nullable=False,
                server_default=_UNKNOWN_UPLOADER,
            )
        )
        table.add_column(
            sa.Column("uploader_role", sa.String(length=32), nullable=False, server_default="")
        )
        table.add_column(
            sa.Column("signed_role", sa.String(length=64), nullable=False, server_default="")
        )
        table.add_column(
            sa.Column("signed_version", sa.Integer(), nullable=False, server_default="0")
        )
        table.add_column(
            sa.Column("signed_keyids", sa.String(length=2048), nullable=False, server_default="")
        )
        table.add_column(sa.Column("signed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Drops the provenance columns."""
    with op.batch_alter_table("release_image") as table:
        for column in (
            "signed_at",
            "signed_keyids",
            "signed_version",
            "signed_role",
            "uploader_role",
            "uploaded_by",
        ):
            table.drop_column(column)
