"""Shared pieces of the campaign tests: a controlled clock, people, a small fleet."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from server.auth.roles import Principal, Role
from server.campaigns.events import EventKind, FailureType, ReportedEvent
from server.campaigns.lifecycle import CampaignActions
from server.campaigns.plan import CampaignPlan
from server.fleet.registry import EcuSpec, provision_vehicle
from server.fleet.selectors import FleetSelector
from server.releases.catalog import create_bundle
from server.releases.models import Image
from server.store import Database

ALICE = Principal("alice", Role.RELEASE_MANAGER)
BOB = Principal("bob", Role.APPROVER)
VIEWER = Principal("vera", Role.VIEWER)
OLD_SHA = "aa" * 32
NEW_SHA = "bb" * 32


@dataclass
class ManualClock:
    """A clock that moves only when the test says so."""

    now: datetime = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def vin(number: int) -> str:
    """A valid VIN made from a number."""
    return f"WSF{number:014d}"


def publish(database: Database) -> str:
    """Images gw-1.0 (installed everywhere) and gw-2.0, and bundle b1 of gw-2.0."""
    with database.session() as session:
        for version, sha, counter in (("1.0", OLD_SHA, 1), ("2.0", NEW_SHA, 2)):
            session.add(
                Image(
                    target_name=f"gw-{version}",
                    name="gw",
                    version=version,
                    hardware_id="gw-x1",
                    release_counter=counter,
                    sha256=sha,
                    length=10,
                    uploaded_at=datetime.now(UTC),
                )
            )
    return create_bundle(
        database, name="sedan-2", vehicle_model="sedan", target_names=["gw-2.0"]
    ).bundle_id


def start_campaign(database: Database, bundle_id: str) -> str:
    """Campaign gw-2 of ``bundle_id`` over every sedan, one wave: created by ALICE,
    approved by BOB and started; returns its id."""
    actions = CampaignActions(database)
    created = actions.create(
        ALICE, name="gw-2", bundle_id=bundle_id, selector=FleetSelector("sedan"),
        plan=CampaignPlan(),
    )  # fmt: skip
    actions.approve(BOB, created.campaign_id)
    actions.start(ALICE, created.campaign_id)
    return created.campaign_id


def add_vehicle(
    database: Database, number: int, *, site: str = "plant-a", tags: tuple[str, ...] = ()
) -> str:
    """A sedan with one gateway running gw-1.0."""
    provision_vehicle(
        database,
        vin=vin(number),
        model="sedan",
        site=site,
        tags=tags,
        ecus=[EcuSpec(f"gw-{number}", "gw-x1", True, OLD_SHA)],
    )
    return vin(number)


def event(
    assignment_id: str,
    kind: EventKind,
    failure: FailureType = FailureType.NONE,
    at: datetime | None = None,
) -> ReportedEvent:
    """One event as a vehicle would report it."""
    return ReportedEvent(
        event_id=str(uuid.uuid4()),
        assignment_id=assignment_id,
        kind=kind,
        failure_type=failure,
        detail="",
        slot="",
        occurred_at=at or datetime.now(UTC),
    )


def success(assignment_id: str, at: datetime | None = None) -> list[ReportedEvent]:
    """The events of an update that committed healthy."""
    return [
        event(assignment_id, kind, at=at)
        for kind in (EventKind.INSTALLED, EventKind.HEALTHY, EventKind.COMMITTED)
    ]


def assignment_state(database: Database, number: int) -> tuple[str, str]:
    """Vehicle ``number``'s assignment: its state (lower case) and its previous images."""
    with database.engine.connect() as connection:
        state, previous = connection.execute(
            text("SELECT state, previous FROM campaign_assignment WHERE vin = :vin"),
            {"vin": vin(number)},
        ).one()
    return str(state).lower(), previous
