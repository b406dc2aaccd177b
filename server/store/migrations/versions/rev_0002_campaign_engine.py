"""From the walking skeleton to the models of today.

Campaigns with waves, gates and approvals; assignments with waves and attempts; fleet
attributes for selectors and ECU public keys; tokens and the append-only audit log (with
its triggers); verified vehicle inventories; relay staging.

Data of the skeleton is carried over: a campaign's model and VIN list become its selector
JSON, its plan one wave of every vehicle (as the skeleton rolled out), its started state
wave 1 opened when it started; an assignment keeps its state, released when its campaign
started; a vehicle's hardware variant is computed from its ECUs.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

_TZ = sa.DateTime(timezone=True)
# Who made the campaigns the skeleton knew: it did not record it.
_UNKNOWN_AUTHOR = "unknown (before revision 0002)"
# One wave of every vehicle, no gate, no pacing: how the skeleton rolled out.
_SKELETON_PLAN = json.dumps(
    {
        "gate": {
            "max_failure_count": None,
            "max_failure_percent": None,
            "min_reports": 1,
            "soak_seconds": 0.0,
            "success_percent": 0.0,
        },
        "max_per_minute": 0,
        "rollback_on_failure": False,
        "waves": [{"count": None, "percent": 100.0}],
        "windows": [],
    },
    sort_keys=True,
)
_CAMPAIGN_STATES = (
    "DRAFT",
    "AWAITING_APPROVAL",
    "APPROVED",
    "RUNNING",
    "PAUSED",
    "COMPLETED",
    "ABORTED",
)
# PostgreSQL enum labels the skeleton lacked, each placed where the models order it.
_NEW_ENUM_LABELS = (
    ("campaignstate", "AWAITING_APPROVAL", "AFTER 'DRAFT'"),
    ("campaignstate", "APPROVED", "AFTER 'AWAITING_APPROVAL'"),
    ("campaignstate", "PAUSED", "AFTER 'RUNNING'"),
    ("campaignstate", "ABORTED", "AFTER 'COMPLETED'"),
    ("assignmentstate", "QUEUED", "BEFORE 'PENDING'"),
    ("assignmentstate", "CANCELED", "AFTER 'ROLLED_BACK'"),
)

# Snapshot of the triggers of server/auth/audit.py at this revision: the audit log
# refuses changes.
_SQLITE_TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
)
_PG_TRIGGERS = (
    "CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger AS $$ "
    "BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$ LANGUAGE plpgsql",
    "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
    "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()",
)


def upgrade() -> None:
    """Brings a skeleton database to today's models, carrying its data over."""
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        # New enum labels must be committed before a trigger's condition may name them.
        with op.get_context().autocommit_block():
            for enum, label, place in _NEW_ENUM_LABELS:
                op.execute(f"ALTER TYPE {enum} ADD VALUE IF NOT EXISTS '{label}' {place}")
    _create_tables()
    _upgrade_fleet()
    _upgrade_campaigns(postgres=postgres)
    _upgrade_assignments()
    for statement in _PG_TRIGGERS if postgres else _SQLITE_TRIGGERS:
        op.execute(statement)


def _create_tables() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", _TZ, nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.String(length=4096), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_log_target", "audit_log", ["target"])
    op.create_table(
        "auth_token",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", _TZ, nullable=False),
        sa.Column("revoked_at", _TZ, nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_sha256"),
    )
    op.create_index("ix_auth_token_name", "auth_token", ["name"])
    op.create_table(
        "repo_vehicle_inventory",
        sa.Column("vin", sa.String(length=32), nullable=False),
        sa.Column("received_at", _TZ, nullable=False),
        sa.Column("latest_time", _TZ, nullable=False),
        sa.Column("nonces", sa.String(length=16384), nullable=False),
        sa.Column("manifest", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("vin"),
    )
    op.create_table(
        "staging_relay",
        sa.Column("relay_id", sa.String(length=64), nullable=False),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("plan_id", sa.String(length=64), nullable=False),
        sa.Column("cached_sha256", sa.String(), nullable=False),
        sa.Column("blobs_total", sa.Integer(), nullable=False),
        sa.Column("reported_at", _TZ, nullable=False),
        sa.PrimaryKeyConstraint("relay_id"),
    )
    op.create_index("ix_staging_relay_site", "staging_relay", ["site"])
    op.create_table(
        "staging_wait",
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("first_asked_at", _TZ, nullable=False),
        sa.PrimaryKeyConstraint("campaign_id", "wave", "site"),
    )


def _upgrade_fleet() -> None:
    with op.batch_alter_table("fleet_vehicle") as batch:
        batch.add_column(sa.Column("region", sa.String(64), nullable=False, server_default=""))
        batch.add_column(sa.Column("site", sa.String(64), nullable=False, server_default=""))
        batch.add_column(sa.Column("tags", sa.String(1100), nullable=False, server_default=","))
        batch.add_column(sa.Column("variant", sa.String(1100), nullable=False, server_default=""))
        batch.add_column(sa.Column("changed_at", _TZ, nullable=True))
    bind = op.get_bind()
    hardware: dict[str, list[str]] = {}
    for vin, hardware_id in bind.execute(sa.text("SELECT vin, hardware_id FROM fleet_ecu")):
        hardware.setdefault(vin, []).append(hardware_id)
    for vin, ids in hardware.items():
        bind.execute(
            sa.text("UPDATE fleet_vehicle SET variant = :variant WHERE vin = :vin"),
            {"variant": "+".join(sorted(ids)), "vin": vin},
        )
    bind.execute(sa.text("UPDATE fleet_vehicle SET changed_at = registered_at"))
    with op.batch_alter_table("fleet_vehicle") as batch:
        for name in ("region", "site", "tags", "variant"):
            batch.alter_column(name, server_default=None)
        batch.alter_column("changed_at", existing_type=_TZ, nullable=False)
        batch.create_index("ix_fleet_vehicle_changed_at", ["changed_at"])
        batch.create_index("ix_fleet_vehicle_region", ["region"])
        batch.create_index("ix_fleet_vehicle_site", ["site"])
    with op.batch_alter_table("fleet_ecu") as batch:
        batch.add_column(
            sa.Column("public_key", sa.String(1024), nullable=False, server_default="")
        )
    with op.batch_alter_table("fleet_ecu") as batch:
        batch.alter_column("public_key", server_default=None)
        batch.create_index("ix_fleet_ecu_installed_sha256", ["installed_sha256"])


def _upgrade_campaigns(*, postgres: bool) -> None:
    kind = sa.Enum("UPDATE", "ROLLBACK", name="campaignkind")
    if postgres:
        kind.create(op.get_bind(), checkfirst=True)
    text_columns: list[tuple[str, Any, str]] = [
        ("selector", sa.String(), "{}"),
        ("plan", sa.String(), "{}"),
        ("waves_opened", sa.String(), "[]"),
        ("pause_reason", sa.String(1024), ""),
        ("author", sa.String(64), _UNKNOWN_AUTHOR),
        ("approved_by", sa.String(64), ""),
    ]
    with op.batch_alter_table("campaign") as batch:
        batch.add_column(sa.Column("kind", kind, nullable=False, server_default="UPDATE"))
        batch.add_column(sa.Column("rollback_of", sa.Integer(), nullable=True))
        for name, type_, default in text_columns:
            batch.add_column(sa.Column(name, type_, nullable=False, server_default=default))
        batch.add_column(
            sa.Column("current_wave", sa.Integer(), nullable=False, server_default="0")
        )
        for name in ("gate_met_at", "gate_reset_at", "joined_until"):
            batch.add_column(sa.Column(name, _TZ, nullable=True))
    bind = op.get_bind()
    skeleton = sa.table(
        "campaign",
        sa.column("id", sa.Integer()),
        sa.column("selector_model", sa.String()),
        sa.column("selector_vins", sa.String()),
        sa.column("state", sa.String()),
        sa.column("started_at", _TZ),
    )
    for campaign_id, model, vins, state, stored_start in bind.execute(sa.select(skeleton)).all():
        started_at = stored_start
        if started_at is not None and started_at.tzinfo is None:
            started_at = started_at.replace(tzinfo=UTC)  # SQLite keeps UTC without offset
        selector = {
            "installed_images": [],
            "regions": [],
            "sites": [],
            "tags": [],
            "vehicle_model": model,
            "vins": vins.split(),
        }
        started = state != "DRAFT"
        bind.execute(
            sa.text(
                "UPDATE campaign SET selector = :selector, plan = :plan, "
                "current_wave = :wave, waves_opened = :opened, approved_by = :approved "
                "WHERE id = :id"
            ),
            {
                "selector": json.dumps(selector, sort_keys=True),
                "plan": _SKELETON_PLAN,
                "wave": 1 if started else 0,
                "opened": json.dumps([started_at.isoformat()] if started and started_at else []),
                "approved": _UNKNOWN_AUTHOR if started else "",
                "id": campaign_id,
            },
        )
    with op.batch_alter_table("campaign") as batch:
        batch.drop_column("selector_model")
        batch.drop_column("selector_vins")
        batch.alter_column("kind", existing_type=kind, server_default=None)
        for name, type_, _ in text_columns:
            batch.alter_column(name, existing_type=type_, server_default=None)
        batch.alter_column("current_wave", existing_type=sa.Integer(), server_default=None)
        if not postgres:  # PostgreSQL got the labels above; SQLite stores names as text
            batch.alter_column(
                "state",
                existing_type=sa.Enum("DRAFT", "RUNNING", "COMPLETED", name="campaignstate"),
                type_=sa.Enum(*_CAMPAIGN_STATES, name="campaignstate"),
                existing_nullable=False,
            )
        batch.create_index("ix_campaign_state", ["state"])


def _upgrade_assignments() -> None:
    defaults: list[tuple[str, Any, str]] = [
        ("wave", sa.Integer(), "1"),
        ("failure_type", sa.String(32), ""),
        ("healthy", sa.Boolean(), sa.false().compile(op.get_bind()).string),
        ("attempt", sa.Integer(), "1"),
        ("previous", sa.String(), ""),
        ("targets", sa.String(), ""),
    ]
    with op.batch_alter_table("campaign_assignment") as batch:
        for name, type_, default in defaults:
            server_default: Any = sa.text(default) if name == "healthy" else default
            batch.add_column(sa.Column(name, type_, nullable=False, server_default=server_default))
        for name in ("released_at", "offered_at", "reported_at"):
            batch.add_column(sa.Column(name, _TZ, nullable=True))
    bind = op.get_bind()
    # Released when the campaign started; offered and reported as the last event says.
    bind.execute(
        sa.text(
            "UPDATE campaign_assignment SET released_at = COALESCE("
            "(SELECT started_at FROM campaign WHERE campaign.id = campaign_assignment.campaign_id),"
            " updated_at)"
        )
    )
    bind.execute(
        sa.text("UPDATE campaign_assignment SET offered_at = updated_at WHERE state <> 'PENDING'")
    )
    bind.execute(
        sa.text(
            "UPDATE campaign_assignment SET reported_at = updated_at "
            "WHERE state IN ('COMMITTED', 'FAILED', 'ROLLED_BACK')"
        )
    )
    bind.execute(
        sa.text(
            "UPDATE campaign_assignment SET healthy = :yes WHERE state = 'COMMITTED'"
        ).bindparams(sa.bindparam("yes", True, type_=sa.Boolean()))
    )
    with op.batch_alter_table("campaign_assignment") as batch:
        for name, type_, _ in defaults:
            batch.alter_column(name, existing_type=type_, server_default=None)
        batch.drop_index("ix_campaign_assignment_campaign_id")
        batch.drop_index("ix_campaign_assignment_state")
        batch.drop_index("ix_campaign_assignment_vin")
        batch.create_index("ix_assignment_campaign_wave_state", ["campaign_id", "wave", "state"])
        batch.create_index("ix_assignment_vin_state", ["vin", "state"])


def downgrade() -> None:
    """Not offered: the skeleton cannot hold what later revisions record (waves, audit)."""
    raise NotImplementedError(
        "revision 0002 has no downgrade: restore the backup taken before `staffel-server migrate`"
    )
