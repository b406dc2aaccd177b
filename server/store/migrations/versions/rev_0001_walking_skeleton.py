"""The schema of the walking skeleton: fleet, releases, campaigns, repository metadata.

Revision ID: 0001
Revises:
Create Date: 2026-11-25 (the first end-to-end commit, 53cd24d)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

_TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Creates the tables of the walking skeleton."""
    op.create_table(
        "campaign_vehicle_event",
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("vin", sa.String(length=17), nullable=False),
        sa.Column("assignment_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("failure_type", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.String(length=1024), nullable=False),
        sa.Column("slot", sa.String(length=8), nullable=False),
        sa.Column("occurred_at", _TZ, nullable=False),
        sa.Column("received_at", _TZ, nullable=False),
        sa.PrimaryKeyConstraint("event_id"),
    )
    op.create_index(
        "ix_campaign_vehicle_event_assignment_id", "campaign_vehicle_event", ["assignment_id"]
    )
    op.create_index("ix_campaign_vehicle_event_vin", "campaign_vehicle_event", ["vin"])
    op.create_table(
        "fleet_vehicle",
        sa.Column("vin", sa.String(length=17), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("registered_at", _TZ, nullable=False),
        sa.Column("last_seen", _TZ, nullable=True),
        sa.PrimaryKeyConstraint("vin"),
    )
    op.create_index("ix_fleet_vehicle_model", "fleet_vehicle", ["model"])
    op.create_table(
        "release_bundle",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("vehicle_model", sa.String(length=64), nullable=False),
        sa.Column("created_at", _TZ, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "release_image",
        sa.Column("target_name", sa.String(length=129), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("hardware_id", sa.String(length=64), nullable=False),
        sa.Column("release_counter", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("length", sa.Integer(), nullable=False),
        sa.Column("uploaded_at", _TZ, nullable=False),
        sa.PrimaryKeyConstraint("target_name"),
    )
    op.create_index("ix_release_image_name", "release_image", ["name"])
    op.create_index("ix_release_image_sha256", "release_image", ["sha256"])
    op.create_table(
        "repo_director_vehicle",
        sa.Column("vin", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("targets_digest", sa.String(length=64), nullable=False),
        sa.Column("timestamp", sa.LargeBinary(), nullable=False),
        sa.Column("snapshot", sa.LargeBinary(), nullable=False),
        sa.Column("targets", sa.LargeBinary(), nullable=False),
        sa.Column("expires", _TZ, nullable=False),
        sa.PrimaryKeyConstraint("vin"),
    )
    op.create_table(
        "repo_metadata",
        sa.Column("repo", sa.String(length=16), nullable=False),
        sa.Column("filename", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("repo", "filename"),
    )
    op.create_table(
        "campaign",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("bundle_id", sa.Integer(), nullable=False),
        sa.Column("selector_model", sa.String(length=64), nullable=False),
        sa.Column("selector_vins", sa.String(), nullable=False),
        sa.Column(
            "state",
            sa.Enum("DRAFT", "RUNNING", "COMPLETED", name="campaignstate"),
            nullable=False,
        ),
        sa.Column("created_at", _TZ, nullable=False),
        sa.Column("started_at", _TZ, nullable=True),
        sa.Column("completed_at", _TZ, nullable=True),
        sa.ForeignKeyConstraint(["bundle_id"], ["release_bundle.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "fleet_ecu",
        sa.Column("serial", sa.String(length=64), nullable=False),
        sa.Column("vin", sa.String(length=17), nullable=False),
        sa.Column("hardware_id", sa.String(length=64), nullable=False),
        sa.Column("primary", sa.Boolean(), nullable=False),
        sa.Column("installed_sha256", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["vin"], ["fleet_vehicle.vin"]),
        sa.PrimaryKeyConstraint("serial"),
    )
    op.create_index("ix_fleet_ecu_vin", "fleet_ecu", ["vin"])
    op.create_table(
        "release_bundle_image",
        sa.Column("bundle_id", sa.Integer(), nullable=False),
        sa.Column("target_name", sa.String(), nullable=False),
        sa.ForeignKeyConstraint(["bundle_id"], ["release_bundle.id"]),
        sa.ForeignKeyConstraint(["target_name"], ["release_image.target_name"]),
        sa.PrimaryKeyConstraint("bundle_id", "target_name"),
    )
    op.create_table(
        "campaign_assignment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("vin", sa.String(length=17), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "PENDING",
                "IN_PROGRESS",
                "COMMITTED",
                "FAILED",
                "ROLLED_BACK",
                name="assignmentstate",
            ),
            nullable=False,
        ),
        sa.Column("last_event", sa.String(length=1100), nullable=False),
        sa.Column("updated_at", _TZ, nullable=False),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaign.id"]),
        sa.ForeignKeyConstraint(["vin"], ["fleet_vehicle.vin"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("campaign_id", "vin"),
    )
    op.create_index("ix_campaign_assignment_campaign_id", "campaign_assignment", ["campaign_id"])
    op.create_index("ix_campaign_assignment_state", "campaign_assignment", ["state"])
    op.create_index("ix_campaign_assignment_vin", "campaign_assignment", ["vin"])


def downgrade() -> None:
    """Drops every table (and, on PostgreSQL, the enum types)."""
    for table in (
        "campaign_assignment",
        "release_bundle_image",
        "fleet_ecu",
        "campaign",
        "repo_metadata",
        "repo_director_vehicle",
        "release_image",
        "release_bundle",
        "fleet_vehicle",
        "campaign_vehicle_event",
    ):
        op.drop_table(table)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TYPE IF EXISTS assignmentstate")
        op.execute("DROP TYPE IF EXISTS campaignstate")
