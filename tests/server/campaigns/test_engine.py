"""Campaigns and vehicle events on SQLite and PostgreSQL (no repository needed)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from server.campaigns.engine import FleetSelector, create_campaign, get_campaign, start_campaign
from server.campaigns.events import EventKind, FailureType, ReportedEvent, record_events
from server.campaigns.models import AssignmentState, CampaignState
from server.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from server.fleet.registry import EcuSpec, provision_vehicle
from server.releases.catalog import create_bundle
from server.releases.models import Image
from server.store import Database

VINS = ["WSF00000000000001", "WSF00000000000002", "WSF00000000000003"]


@pytest.fixture
def fleet(database: Database) -> Database:
    """Three sedans, one coupe, and a published gateway image in a sedan bundle."""
    for index, vin in enumerate(VINS):
        provision_vehicle(
            database, vin=vin, model="sedan", ecus=[EcuSpec(f"gw-{index}", "gw-x1", True)]
        )
    provision_vehicle(
        database, vin="WSF00000000000009", model="coupe", ecus=[EcuSpec("gw-9", "gw-x1", True)]
    )
    with database.session() as session:
        session.add(
            Image(
                target_name="gw-2.0",
                name="gw",
                version="2.0",
                hardware_id="gw-x1",
                release_counter=2,
                sha256="ab" * 32,
                length=10,
                uploaded_at=datetime.now(UTC),
            )
        )
    bundle = create_bundle(database, name="sedan-2", vehicle_model="sedan", target_names=["gw-2.0"])
    assert bundle.bundle_id == "b1"
    return database


def event(
    assignment_id: str, kind: EventKind, failure: FailureType = FailureType.NONE
) -> ReportedEvent:
    return ReportedEvent(
        event_id=str(uuid.uuid4()),
        assignment_id=assignment_id,
        kind=kind,
        failure_type=failure,
        detail="",
        slot="",
        occurred_at=datetime.now(UTC),
    )


def test_start_assigns_every_selected_vehicle(fleet: Database) -> None:
    draft = create_campaign(fleet, name="gw-2", bundle_id="b1", selector=FleetSelector("sedan"))
    assert draft.state == CampaignState.DRAFT
    assert draft.assignments == ()
    running = start_campaign(fleet, draft.campaign_id)
    assert running.state == CampaignState.RUNNING
    assert [a.vin for a in running.assignments] == VINS
    assert running.counts[AssignmentState.PENDING] == 3
    with pytest.raises(FailedPreconditionError, match="only a draft"):
        start_campaign(fleet, draft.campaign_id)


def test_outcomes_are_counted_and_complete_the_campaign(fleet: Database) -> None:
    campaign = start_campaign(
        fleet,
        create_campaign(
            fleet, name="gw-2", bundle_id="b1", selector=FleetSelector("sedan")
        ).campaign_id,
    )
    ids = {a.vin: a.assignment_id for a in campaign.assignments}
    record_events(
        fleet,
        VINS[0],
        [event(ids[VINS[0]], EventKind.INSTALLED), event(ids[VINS[0]], EventKind.COMMITTED)],
    )
    record_events(
        fleet,
        VINS[1],
        [event(ids[VINS[1]], EventKind.HEALTH_FAILED), event(ids[VINS[1]], EventKind.ROLLED_BACK)],
    )
    assert get_campaign(fleet, campaign.campaign_id).state == CampaignState.RUNNING
    record_events(fleet, VINS[2], [event(ids[VINS[2]], EventKind.FAILED, FailureType.VERIFICATION)])
    done = get_campaign(fleet, campaign.campaign_id)
    assert done.state == CampaignState.COMPLETED
    assert done.counts[AssignmentState.COMMITTED] == 1
    assert done.counts[AssignmentState.ROLLED_BACK] == 1
    assert done.counts[AssignmentState.FAILED] == 1


def test_resent_events_are_recorded_once_and_outcomes_never_flip(fleet: Database) -> None:
    campaign = start_campaign(
        fleet,
        create_campaign(
            fleet, name="gw-2", bundle_id="b1", selector=FleetSelector(vins=(VINS[0],))
        ).campaign_id,
    )
    assignment_id = campaign.assignments[0].assignment_id
    batch = [event(assignment_id, EventKind.DOWNLOADED), event(assignment_id, EventKind.COMMITTED)]
    first = record_events(fleet, VINS[0], batch)
    again = record_events(fleet, VINS[0], batch)
    assert (first.accepted, first.duplicates) == (2, 0)
    assert (again.accepted, again.duplicates) == (0, 2)
    record_events(fleet, VINS[0], [event(assignment_id, EventKind.ROLLED_BACK)])
    view = get_campaign(fleet, campaign.campaign_id)
    assert view.assignments[0].state == AssignmentState.COMMITTED


def test_a_vehicle_is_in_one_running_campaign_at_a_time(fleet: Database) -> None:
    first = create_campaign(fleet, name="one", bundle_id="b1", selector=FleetSelector("sedan"))
    start_campaign(fleet, first.campaign_id)
    second = create_campaign(fleet, name="two", bundle_id="b1", selector=FleetSelector("sedan"))
    with pytest.raises(FailedPreconditionError, match="3 busy"):
        start_campaign(fleet, second.campaign_id)


def test_events_for_another_vehicles_assignment_are_refused(fleet: Database) -> None:
    campaign = start_campaign(
        fleet,
        create_campaign(
            fleet, name="gw-2", bundle_id="b1", selector=FleetSelector("sedan")
        ).campaign_id,
    )
    foreign = campaign.assignments[1].assignment_id
    with pytest.raises(InvalidArgumentError, match="does not belong"):
        record_events(fleet, VINS[0], [event(foreign, EventKind.COMMITTED)])
    assert get_campaign(fleet, campaign.campaign_id).counts[AssignmentState.PENDING] == 3


def test_bad_campaign_requests_say_what_is_wrong(fleet: Database) -> None:
    with pytest.raises(NotFoundError, match="b7"):
        create_campaign(fleet, name="x", bundle_id="b7", selector=FleetSelector("sedan"))
    with pytest.raises(InvalidArgumentError, match="for model sedan, not coupe"):
        create_campaign(fleet, name="x", bundle_id="b1", selector=FleetSelector("coupe"))
    with pytest.raises(InvalidArgumentError, match="campaign id"):
        get_campaign(fleet, "campaign-1")
    with pytest.raises(InvalidArgumentError, match="FAILED event needs a failure type"):
        record_events(fleet, VINS[0], [event("", EventKind.FAILED)])
