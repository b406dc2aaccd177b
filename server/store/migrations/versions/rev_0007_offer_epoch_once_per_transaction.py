"""The offer epoch advances at most once per transaction on PostgreSQL.

The trigger functions of revision 0003 now note in a transaction-local setting that they
bumped the epoch, so a transaction that writes many rows updates the epoch row once
(snapshot of server/campaigns/offers.py). SQLite's triggers are unchanged.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None

_BUMP_ONCE = (
    "IF current_setting('staffel.offer_epoch_bumped', true) IS DISTINCT FROM 'yes' "
    "THEN UPDATE campaign_offer_epoch SET value = value + 1 WHERE id = 1; "
    "PERFORM set_config('staffel.offer_epoch_bumped', 'yes', true); END IF;"
)
_FUNCTION = (
    "CREATE OR REPLACE FUNCTION staffel_offer_epoch_{name}() RETURNS trigger AS $$ "
    "BEGIN {body} RETURN NULL; END $$ LANGUAGE plpgsql"
)
_FUNCTIONS = (
    _FUNCTION.format(name="bump", body=_BUMP_ONCE),
    _FUNCTION.format(
        name="assignment_insert",
        body="IF EXISTS (SELECT 1 FROM offer_new WHERE state IN ('PENDING', 'IN_PROGRESS')) "  # noqa: S608 - constants
        f"THEN {_BUMP_ONCE} END IF;",
    ),
    _FUNCTION.format(
        name="assignment_update",
        body="IF EXISTS (SELECT 1 FROM offer_new n JOIN offer_old o ON o.id = n.id "  # noqa: S608 - constants
        "WHERE n.state IN ('PENDING', 'IN_PROGRESS') "
        "AND o.state NOT IN ('PENDING', 'IN_PROGRESS')) "
        f"THEN {_BUMP_ONCE} END IF;",
    ),
)


def upgrade() -> None:
    """Replaces the PostgreSQL trigger functions; nothing to do on SQLite."""
    if op.get_bind().dialect.name == "postgresql":
        for statement in _FUNCTIONS:
            op.execute(statement)


def downgrade() -> None:
    """Not offered: bumping more than once per transaction is never wanted back."""
    raise NotImplementedError("revision 0007 has no downgrade: restore a backup instead")
