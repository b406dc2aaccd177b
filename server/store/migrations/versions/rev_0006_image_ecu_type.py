"""The ECU type (or supplier) of each image, as its upload header gave it.

Images published before this revision have none (an empty string).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Adds ``release_image.ecu_type``."""
    with op.batch_alter_table("release_image") as table:
        table.add_column(
            sa.Column("ecu_type", sa.String(length=64), nullable=False, server_default="")
        )


def downgrade() -> None:
    """Drops ``release_image.ecu_type``."""
    with op.batch_alter_table("release_image") as table:
        table.drop_column("ecu_type")
