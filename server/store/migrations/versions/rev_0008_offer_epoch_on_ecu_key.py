"""The offer epoch also moves when an ECU's public key changes.

The manifest gate trusts a vehicle found without ECU keys to have none while the epoch
stands still, so the ``fleet_ecu`` update trigger now fires on ``public_key`` too
(snapshot of server/campaigns/offers.py at this revision).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None

_BUMP = "UPDATE campaign_offer_epoch SET value = value + 1 WHERE id = 1"
_ECU_CHANGED_PG = (
    "NEW.serial IS DISTINCT FROM OLD.serial OR NEW.vin IS DISTINCT FROM OLD.vin "
    "OR NEW.hardware_id IS DISTINCT FROM OLD.hardware_id "
    "OR NEW.installed_sha256 IS DISTINCT FROM OLD.installed_sha256 "
    'OR NEW."primary" IS DISTINCT FROM OLD."primary"'
)
_WITH_KEY = " OR NEW.public_key IS DISTINCT FROM OLD.public_key"


def _sqlite(condition: str) -> str:
    return (
        "CREATE TRIGGER offer_epoch_ecu_update AFTER UPDATE ON fleet_ecu "
        f"WHEN {condition.replace('IS DISTINCT FROM', 'IS NOT')} BEGIN {_BUMP}; END"
    )


def _postgresql(condition: str) -> str:
    return (
        "CREATE OR REPLACE TRIGGER offer_epoch_ecu_update AFTER UPDATE ON fleet_ecu "
        f"FOR EACH ROW WHEN ({condition}) EXECUTE FUNCTION staffel_offer_epoch_bump()"
    )


def _replace_trigger(condition: str) -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS offer_epoch_ecu_update")
        op.execute(_sqlite(condition))
    else:
        op.execute(_postgresql(condition))


def upgrade() -> None:
    """The ECU update trigger fires on a changed public key as well."""
    _replace_trigger(_ECU_CHANGED_PG + _WITH_KEY)


def downgrade() -> None:
    """Back to the trigger of revision 0003 (0007 kept its condition)."""
    _replace_trigger(_ECU_CHANGED_PG)
