"""The offer epoch: one counter row and the triggers that advance it.

Quiet check-ins are answered from memory while the epoch stands still; see
server/campaigns/offers.py for when it moves.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

# Snapshot of the triggers of server/campaigns/offers.py at this revision: the epoch grows,
# in the transaction of the change, whenever a vehicle may have gained something to do.
_BUMP = "UPDATE campaign_offer_epoch SET value = value + 1 WHERE id = 1"
_ECU_CHANGED_PG = (
    "NEW.serial IS DISTINCT FROM OLD.serial OR NEW.vin IS DISTINCT FROM OLD.vin "
    "OR NEW.hardware_id IS DISTINCT FROM OLD.hardware_id "
    "OR NEW.installed_sha256 IS DISTINCT FROM OLD.installed_sha256 "
    'OR NEW."primary" IS DISTINCT FROM OLD."primary"'
)
_ECU_CHANGED_SQLITE = _ECU_CHANGED_PG.replace("IS DISTINCT FROM", "IS NOT")
_SQLITE_TRIGGERS = (
    "INSERT OR IGNORE INTO campaign_offer_epoch (id, value) VALUES (1, 0)",
    "CREATE TRIGGER IF NOT EXISTS offer_epoch_campaign_insert AFTER INSERT ON campaign "
    f"WHEN NEW.state IN ('RUNNING', 'PAUSED') BEGIN {_BUMP}; END",
    "CREATE TRIGGER IF NOT EXISTS offer_epoch_campaign_update AFTER UPDATE OF state ON "
    "campaign WHEN NEW.state IS NOT OLD.state AND NEW.state IN ('RUNNING', 'PAUSED') "
    f"BEGIN {_BUMP}; END",
    "CREATE TRIGGER IF NOT EXISTS offer_epoch_assignment_insert AFTER INSERT ON "
    f"campaign_assignment WHEN NEW.state IN ('PENDING', 'IN_PROGRESS') BEGIN {_BUMP}; END",
    "CREATE TRIGGER IF NOT EXISTS offer_epoch_assignment_update AFTER UPDATE OF state ON "
    "campaign_assignment WHEN NEW.state IN ('PENDING', 'IN_PROGRESS') "
    f"AND OLD.state NOT IN ('PENDING', 'IN_PROGRESS') BEGIN {_BUMP}; END",
    f"CREATE TRIGGER IF NOT EXISTS offer_epoch_ecu_insert AFTER INSERT ON fleet_ecu "
    f" BEGIN {_BUMP}; END",
    f"CREATE TRIGGER IF NOT EXISTS offer_epoch_ecu_delete AFTER DELETE ON fleet_ecu "
    f" BEGIN {_BUMP}; END",
    "CREATE TRIGGER IF NOT EXISTS offer_epoch_ecu_update AFTER UPDATE ON fleet_ecu "
    f"WHEN {_ECU_CHANGED_SQLITE} BEGIN {_BUMP}; END",
)
_PG_TRIGGERS = (
    "INSERT INTO campaign_offer_epoch (id, value) VALUES (1, 0) ON CONFLICT (id) DO NOTHING",
    "CREATE OR REPLACE FUNCTION staffel_offer_epoch_bump() RETURNS trigger AS $$ "
    f"BEGIN {_BUMP}; RETURN NULL; END $$ LANGUAGE plpgsql",
    # A constant statement, no input in it.
    "CREATE OR REPLACE FUNCTION staffel_offer_epoch_assignment_insert() RETURNS trigger AS $$ "  # noqa: S608
    "BEGIN IF EXISTS (SELECT 1 FROM offer_new WHERE state IN ('PENDING', 'IN_PROGRESS')) "
    f"THEN {_BUMP}; END IF; RETURN NULL; END $$ LANGUAGE plpgsql",
    # A constant statement, no input in it.
    "CREATE OR REPLACE FUNCTION staffel_offer_epoch_assignment_update() RETURNS trigger AS $$ "  # noqa: S608
    "BEGIN IF EXISTS (SELECT 1 FROM offer_new n JOIN offer_old o ON o.id = n.id "
    "WHERE n.state IN ('PENDING', 'IN_PROGRESS') AND o.state NOT IN ('PENDING', 'IN_PROGRESS')) "
    f"THEN {_BUMP}; END IF; RETURN NULL; END $$ LANGUAGE plpgsql",
    "CREATE OR REPLACE TRIGGER offer_epoch_campaign_insert AFTER INSERT ON campaign "
    "FOR EACH ROW WHEN (NEW.state IN ('RUNNING', 'PAUSED')) "
    "EXECUTE FUNCTION staffel_offer_epoch_bump()",
    "CREATE OR REPLACE TRIGGER offer_epoch_campaign_update AFTER UPDATE OF state ON campaign "
    "FOR EACH ROW WHEN (NEW.state IS DISTINCT FROM OLD.state "
    "AND NEW.state IN ('RUNNING', 'PAUSED')) EXECUTE FUNCTION staffel_offer_epoch_bump()",
    "CREATE OR REPLACE TRIGGER offer_epoch_assignment_insert AFTER INSERT ON "
    "campaign_assignment REFERENCING NEW TABLE AS offer_new FOR EACH STATEMENT "
    "EXECUTE FUNCTION staffel_offer_epoch_assignment_insert()",
    "CREATE OR REPLACE TRIGGER offer_epoch_assignment_update AFTER UPDATE ON "
    "campaign_assignment REFERENCING OLD TABLE AS offer_old NEW TABLE AS offer_new "
    "FOR EACH STATEMENT EXECUTE FUNCTION staffel_offer_epoch_assignment_update()",
    "CREATE OR REPLACE TRIGGER offer_epoch_ecu_insert_delete AFTER INSERT OR DELETE ON "
    "fleet_ecu FOR EACH STATEMENT EXECUTE FUNCTION staffel_offer_epoch_bump()",
    "CREATE OR REPLACE TRIGGER offer_epoch_ecu_update AFTER UPDATE ON fleet_ecu "
    f"FOR EACH ROW WHEN ({_ECU_CHANGED_PG}) EXECUTE FUNCTION staffel_offer_epoch_bump()",
)


def upgrade() -> None:
    """Creates the epoch row and its triggers."""
    op.create_table(
        "campaign_offer_epoch",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in _PG_TRIGGERS if postgres else _SQLITE_TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    """Drops the triggers, their functions and the epoch table."""
    if op.get_bind().dialect.name == "postgresql":
        for table, name in _PG_TRIGGER_NAMES:
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        for function in ("bump", "assignment_insert", "assignment_update"):
            op.execute(f"DROP FUNCTION IF EXISTS staffel_offer_epoch_{function}()")
    else:
        for _, name in _SQLITE_TRIGGER_NAMES:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_table("campaign_offer_epoch")


_PG_TRIGGER_NAMES = (
    ("campaign", "offer_epoch_campaign_insert"),
    ("campaign", "offer_epoch_campaign_update"),
    ("campaign_assignment", "offer_epoch_assignment_insert"),
    ("campaign_assignment", "offer_epoch_assignment_update"),
    ("fleet_ecu", "offer_epoch_ecu_insert_delete"),
    ("fleet_ecu", "offer_epoch_ecu_update"),
)
_SQLITE_TRIGGER_NAMES = (
    ("campaign", "offer_epoch_campaign_insert"),
    ("campaign", "offer_epoch_campaign_update"),
    ("campaign_assignment", "offer_epoch_assignment_insert"),
    ("campaign_assignment", "offer_epoch_assignment_update"),
    ("fleet_ecu", "offer_epoch_ecu_insert"),
    ("fleet_ecu", "offer_epoch_ecu_delete"),
    ("fleet_ecu", "offer_epoch_ecu_update"),
)
