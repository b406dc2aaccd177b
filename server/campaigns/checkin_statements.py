"""The check-in's prebuilt statements (Core, compiled once per dialect).

The check-in runs thousands of times a second, and building an ORM query costs more than the
database takes to answer it. ``server/campaigns/checkin.py`` decides what to run.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    ARRAY,
    Integer,
    Select,
    String,
    and_,
    any_,
    bindparam,
    func,
    or_,
    true,
    update,
)
from sqlalchemy import select as sql_select
from sqlmodel import SQLModel

# Imported for their tables, which the statements below name.
from server.campaigns import models as _campaign_models  # noqa: F401
from server.campaigns.models import AssignmentState, CampaignState
from server.campaigns.offers import EPOCH_UNCHANGED
from server.fleet import models as _fleet_models  # noqa: F401
from server.releases import models as _release_models  # noqa: F401
from server.repository.director import STATE_COLUMNS, STATE_TABLE
from server.store.direct import DirectStatement

OFFERABLE = (AssignmentState.PENDING, AssignmentState.IN_PROGRESS)

VEHICLES = SQLModel.metadata.tables["fleet_vehicle"]
ECUS = SQLModel.metadata.tables["fleet_ecu"]
ASSIGNMENTS = SQLModel.metadata.tables["campaign_assignment"]
CAMPAIGNS = SQLModel.metadata.tables["campaign"]
IMAGES = SQLModel.metadata.tables["release_image"]
BUNDLE_IMAGES = SQLModel.metadata.tables["release_bundle_image"]
IMAGE_COLUMNS = (
    IMAGES.c.target_name,
    IMAGES.c.sha256,
    IMAGES.c.length,
    IMAGES.c.hardware_id,
)
LOAD_BUNDLE = (
    sql_select(*IMAGE_COLUMNS)
    .select_from(IMAGES.join(BUNDLE_IMAGES, BUNDLE_IMAGES.c.target_name == IMAGES.c.target_name))
    .where(BUNDLE_IMAGES.c.bundle_id == bindparam("bundle_id"))
    .order_by(IMAGES.c.target_name)
)
LOAD_IMAGES = sql_select(*IMAGE_COLUMNS).where(
    IMAGES.c.target_name.in_(bindparam("names", expanding=True))
)
VEHICLE_COLUMNS = (
    VEHICLES.c.site,
    VEHICLES.c.last_seen,
    ECUS.c.serial,
    ECUS.c.hardware_id,
    ECUS.c.primary,
    ECUS.c.installed_sha256,
    (ECUS.c.public_key != "").label("has_key"),
)
VEHICLE_WITH_ECUS = VEHICLES.outerjoin(ECUS, ECUS.c.vin == VEHICLES.c.vin)
LOAD_VEHICLE = DirectStatement(
    sql_select(*VEHICLE_COLUMNS)
    .select_from(VEHICLE_WITH_ECUS)
    .where(VEHICLES.c.vin == bindparam("vin"))
    .order_by(ECUS.c.serial)
)
SET_INSTALLED = DirectStatement(
    update(ECUS)
    .where(ECUS.c.serial == bindparam("ecu_serial"))
    .values(installed_sha256=bindparam("sha256"))
)
SET_CHANGED = DirectStatement(
    update(VEHICLES)
    .where(VEHICLES.c.vin == bindparam("vehicle_vin"))
    .values(changed_at=bindparam("changed_at"))
)
SET_LAST_SEEN = DirectStatement(
    update(VEHICLES)
    .where(VEHICLES.c.vin == bindparam("vehicle_vin"))
    .values(last_seen=bindparam("seen"))
)


def open_assignment_query(vin: Any) -> Select[Any]:
    """The vehicle's assignment to offer, with its campaign's bundle and plan and the
    Director's state of the vehicle."""
    return (
        sql_select(
            ASSIGNMENTS.c.id,
            ASSIGNMENTS.c.state,
            ASSIGNMENTS.c.targets,
            CAMPAIGNS.c.bundle_id,
            CAMPAIGNS.c.plan,
            # The Director's state of the vehicle, read here to save a round trip.
            *STATE_COLUMNS,
        )
        .select_from(
            ASSIGNMENTS.join(CAMPAIGNS, CAMPAIGNS.c.id == ASSIGNMENTS.c.campaign_id).outerjoin(
                STATE_TABLE, STATE_TABLE.c.vin == ASSIGNMENTS.c.vin
            )
        )
        .where(ASSIGNMENTS.c.vin == vin)
        .where(
            or_(
                and_(
                    CAMPAIGNS.c.state == CampaignState.RUNNING,
                    # Equalities, not IN: an IN list is rendered anew at every execution.
                    or_(*(ASSIGNMENTS.c.state == state for state in OFFERABLE)),
                ),
                and_(
                    CAMPAIGNS.c.state == CampaignState.PAUSED,
                    ASSIGNMENTS.c.state == AssignmentState.IN_PROGRESS,
                ),
            )
        )
        .order_by(ASSIGNMENTS.c.id)
        .limit(1)
    )


# Locked while the check-in's transaction decides and writes.
OPEN_ASSIGNMENT = DirectStatement(
    open_assignment_query(bindparam("vin")).with_for_update(of=ASSIGNMENTS)
)
# The registry's rows of the vehicle, each with its open assignment (NULLs for none), in
# one statement without a lock: the reads of _answer_from_reads (PostgreSQL).
OPEN_OF_VEHICLE = open_assignment_query(VEHICLES.c.vin).lateral("open_assignment")
READ_CHECK_IN = DirectStatement(
    sql_select(*VEHICLE_COLUMNS, *OPEN_OF_VEHICLE.c)
    .select_from(VEHICLE_WITH_ECUS.outerjoin(OPEN_OF_VEHICLE, true()))
    .where(VEHICLES.c.vin == bindparam("vin"))
    .order_by(ECUS.c.serial)
)
# The same for several vehicles at once (concurrent check-ins' reads, coalesced), each row
# with its vehicle's VIN.
READ_CHECK_INS = DirectStatement(
    sql_select(VEHICLES.c.vin.label("vehicle_vin"), *VEHICLE_COLUMNS, *OPEN_OF_VEHICLE.c)
    .select_from(VEHICLE_WITH_ECUS.outerjoin(OPEN_OF_VEHICLE, true()))
    .where(VEHICLES.c.vin == any_(bindparam("vins", type_=ARRAY(String))))
    .order_by(VEHICLES.c.vin, ECUS.c.serial)
)


FAIL_UNMATCHED = DirectStatement(
    update(ASSIGNMENTS)
    .where(ASSIGNMENTS.c.id == bindparam("assignment_id"))
    .values(
        state=AssignmentState.FAILED,
        failure_type="install",
        reported_at=bindparam("now"),
        last_event="failed: no ECU of the vehicle matches the bundle's hardware ids",
        updated_at=bindparam("now"),
    )
)
TAKEN = {
    "state": AssignmentState.IN_PROGRESS,
    "offered_at": bindparam("now"),
    "previous": bindparam("previous_images"),
    "last_event": "offered",
    "updated_at": bindparam("now"),
}
# Taking a pending assignment leaves it offerable: the offer epoch cannot move.
TAKE = DirectStatement(
    update(ASSIGNMENTS)
    .prefix_with(EPOCH_UNCHANGED)
    .where(ASSIGNMENTS.c.id == bindparam("assignment_id"))
    .values(**TAKEN)
)
# A take without a transaction is conditional: the assignment is still pending in a
# running campaign, as the check-in's read found it.
STILL_PENDING = and_(
    ASSIGNMENTS.c.state == AssignmentState.PENDING,
    sql_select(CAMPAIGNS.c.state)
    .where(CAMPAIGNS.c.id == ASSIGNMENTS.c.campaign_id)
    .scalar_subquery()
    == CampaignState.RUNNING,
)
# The take as one statement of its own (no transaction).
TAKE_IF_STILL_PENDING = DirectStatement(
    update(ASSIGNMENTS)
    .prefix_with(EPOCH_UNCHANGED)
    .where(ASSIGNMENTS.c.id == bindparam("assignment_id"))
    .where(STILL_PENDING)
    .values(**TAKEN)
)


def _not_locked_elsewhere(ids: Any) -> Any:
    """The assignments among ``ids`` no other transaction holds a row lock on (locked
    now): a batch of takes must not wait for a lock, as every take after it would wait too.
    A check-in whose assignment is skipped runs the transaction, which waits alone."""
    unlocked = ASSIGNMENTS.alias("unlocked")
    return ASSIGNMENTS.c.id.in_(
        sql_select(unlocked.c.id).where(unlocked.c.id == ids).with_for_update(skip_locked=True)
    )


# The take of a batch of one check-in.
TAKE_ONE_NOT_LOCKED = DirectStatement(
    update(ASSIGNMENTS)
    .prefix_with(EPOCH_UNCHANGED)
    .where(ASSIGNMENTS.c.id == bindparam("assignment_id"))
    .where(_not_locked_elsewhere(bindparam("assignment_id")))
    .where(STILL_PENDING)
    .values(**TAKEN)
)
# Several assignments at once (concurrent check-ins' takes, coalesced), each with its own
# moment and previous images; returns the ids taken.
TAKING = sql_select(
    func.unnest(bindparam("assignment_ids", type_=ARRAY(Integer))).label("id"),
    func.unnest(bindparam("nows", type_=ARRAY(ASSIGNMENTS.c.offered_at.type))).label("now"),
    func.unnest(bindparam("previous_images", type_=ARRAY(String))).label("previous"),
).subquery("taking")
TAKE_ALL_STILL_PENDING = DirectStatement(
    update(ASSIGNMENTS)
    .prefix_with(EPOCH_UNCHANGED)
    .where(ASSIGNMENTS.c.id == TAKING.c.id)
    .where(_not_locked_elsewhere(any_(bindparam("assignment_ids", type_=ARRAY(Integer)))))
    .where(STILL_PENDING)
    .values(
        {
            **TAKEN,
            "offered_at": TAKING.c.now,
            "previous": TAKING.c.previous,
            "updated_at": TAKING.c.now,
        }
    )
    .returning(ASSIGNMENTS.c.id)
)
