"""Campaign lifecycle on SQLite and PostgreSQL: approvals, roles, gates, pacing, windows,
rollback, retry, late joiners, one campaign per vehicle (real store, real Director)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from keys.keyset import KeySet, init_keyset
from server.app import main as server_main
from server.auth.models import AuditEntry
from server.campaigns.checkin import CheckInResult, check_in
from server.campaigns.eligibility import MaintenanceWindow, Pacing
from server.campaigns.engine import CampaignEngine
from server.campaigns.events import EventKind, FailureType, record_events
from server.campaigns.gates import Gate
from server.campaigns.lifecycle import CampaignActions
from server.campaigns.models import AssignmentState, CampaignState, VehicleEventRecord
from server.campaigns.plan import CampaignPlan, WaveSpec
from server.campaigns.views import CampaignView, get_campaign
from server.errors import FailedPreconditionError, InvalidArgumentError, PermissionDeniedError
from server.fleet.registry import EcuSpec, get_vehicle
from server.fleet.selectors import FleetSelector
from server.repository.director import Director
from server.store import Database
from tests.server.campaigns.support import (
    ALICE,
    BOB,
    NEW_SHA,
    OLD_SHA,
    VIEWER,
    ManualClock,
    add_vehicle,
    event,
    publish,
    success,
)


@dataclass
class Env:
    database: Database
    director: Director
    clock: ManualClock
    actions: CampaignActions
    engine: CampaignEngine
    bundle: str

    def check_in(self, vin: str, installed: str = OLD_SHA) -> CheckInResult:
        serial = get_vehicle(self.database, vin).ecus[0].serial
        return check_in(
            self.database,
            self.director,
            vin=vin,
            ecus=[EcuSpec(serial, "gw-x1", True, installed)],
            nonce=os.urandom(16),
            poll_seconds=60,
            clock=self.clock,
        )

    def launch(self, plan: CampaignPlan, selector: FleetSelector | None = None) -> str:
        created = self.actions.create(
            ALICE,
            name="gw-2",
            bundle_id=self.bundle,
            selector=selector or FleetSelector("sedan"),
            plan=plan,
        )
        self.actions.approve(BOB, created.campaign_id)
        return self.actions.start(ALICE, created.campaign_id).campaign_id

    def view(self, campaign_id: str) -> CampaignView:
        return get_campaign(self.database, campaign_id, clock=self.clock)


@pytest.fixture
def env(database: Database, tmp_path: Path) -> Env:
    init_keyset(tmp_path / "keys")
    clock = ManualClock()
    director = Director(database, KeySet.load(tmp_path / "keys"), clock=clock)
    director.initialize()
    return Env(
        database=database,
        director=director,
        clock=clock,
        actions=CampaignActions(database, clock=clock),
        engine=CampaignEngine(database, clock=clock),
        bundle=publish(database),
    )


OPEN_GATE = Gate(success_percent=50.0, max_failure_percent=None, min_reports=1)


def test_author_cannot_approve_and_viewer_cannot_start(env: Env) -> None:
    add_vehicle(env.database, 1)
    created = env.actions.create(
        ALICE, name="gw-2", bundle_id=env.bundle, selector=FleetSelector("sedan"),
        plan=CampaignPlan(),
    )  # fmt: skip
    assert created.state == CampaignState.AWAITING_APPROVAL
    with pytest.raises(PermissionDeniedError, match="approver"):
        env.actions.approve(ALICE, created.campaign_id)
    with pytest.raises(FailedPreconditionError, match="only a campaign that is approved"):
        env.actions.start(ALICE, created.campaign_id)
    author_as_approver = type(BOB)("alice", BOB.role)
    with pytest.raises(PermissionDeniedError, match="four-eyes"):
        env.actions.approve(author_as_approver, created.campaign_id)
    env.actions.approve(BOB, created.campaign_id)
    with pytest.raises(PermissionDeniedError, match="vera \\(viewer\\) may not start"):
        env.actions.start(VIEWER, created.campaign_id)
    assert env.actions.start(ALICE, created.campaign_id).state == CampaignState.RUNNING
    with env.database.session() as session:
        actions = [e.action for e in session.exec(select(AuditEntry)).all()]
    assert actions[:4] == [
        "campaign.create",
        "campaign.approve",
        "campaign.wave_open",
        "campaign.start",
    ]


def test_audit_log_refuses_changes(env: Env) -> None:
    add_vehicle(env.database, 1)
    env.launch(CampaignPlan())
    with pytest.raises(Exception, match="append-only"), env.database.session() as session:
        entry = session.exec(select(AuditEntry)).first()
        assert entry is not None
        entry.actor = "mallory"
        session.add(entry)


def test_failure_gate_pauses_and_success_gate_opens_the_next_wave_after_soak(env: Env) -> None:
    vins = [add_vehicle(env.database, n) for n in range(1, 21)]
    plan = CampaignPlan(
        waves=(WaveSpec(percent=10.0), WaveSpec(percent=100.0)),
        gate=Gate(success_percent=90.0, max_failure_percent=20.0, min_reports=2,
                  soak=timedelta(minutes=30)),
    )  # fmt: skip
    campaign_id = env.launch(plan)
    first = {a.vin for a in env.view(campaign_id).assignments if a.wave == 1}
    assert len(first) == 2
    offers = {vin: env.check_in(vin).assignment_id for vin in vins}
    assert {vin for vin, offer in offers.items() if offer} == first
    for vin in first:
        record_events(env.database, vin, success(offers[vin]), clock=env.clock)
    env.engine.step()
    assert env.view(campaign_id).current_wave == 1
    env.clock.advance(minutes=29)
    env.engine.step()
    assert env.view(campaign_id).current_wave == 1, "wave 2 must wait for the soak time"
    env.clock.advance(minutes=1)
    env.engine.step()
    view = env.view(campaign_id)
    assert view.current_wave == 2
    assert view.waves[1].opened_at == env.clock.now
    second = [vin for vin in vins if vin not in first]
    offers = {vin: env.check_in(vin).assignment_id for vin in second}
    for vin in second[:3]:
        record_events(
            env.database, vin,
            [event(offers[vin], EventKind.FAILED, FailureType.DOWNLOAD)], clock=env.clock,
        )  # fmt: skip
    for vin in second[3:6]:
        record_events(env.database, vin, success(offers[vin]), clock=env.clock)
    env.engine.step()
    view = env.view(campaign_id)
    assert view.state == CampaignState.PAUSED
    assert "failure gate of wave 2: 50.0% of 6 reports" in view.pause_reason
    # Paused: vehicles that took the update may finish; resume counts new reports only.
    assert env.check_in(second[7]).assignment_id
    env.actions.resume(ALICE, campaign_id)
    for vin in second[6:]:
        record_events(env.database, vin, success(offers[vin]), clock=env.clock)
    env.engine.step()
    view = env.view(campaign_id)
    assert view.state == CampaignState.COMPLETED
    assert view.counts[AssignmentState.COMMITTED] == 17
    assert view.counts[AssignmentState.FAILED] == 3


def test_pacing_releases_at_most_n_per_minute(env: Env) -> None:
    vins = [add_vehicle(env.database, n) for n in range(1, 11)]
    campaign_id = env.launch(CampaignPlan(gate=OPEN_GATE, pacing=Pacing(max_per_minute=4)))
    assert env.view(campaign_id).counts[AssignmentState.PENDING] == 4
    env.engine.step()
    assert sum(bool(env.check_in(v).assignment_id) for v in vins) == 4
    env.clock.advance(seconds=59)
    env.engine.step()
    assert env.view(campaign_id).counts[AssignmentState.QUEUED] == 6
    env.clock.advance(seconds=2)
    env.engine.step()
    assert env.view(campaign_id).counts[AssignmentState.QUEUED] == 2
    env.clock.advance(minutes=1)
    env.engine.step()
    assert env.view(campaign_id).counts[AssignmentState.QUEUED] == 0


def test_a_wave_larger_than_the_release_batch_opens_over_consecutive_steps(env: Env) -> None:
    vins = [add_vehicle(env.database, n) for n in range(1, 11)]
    plan = CampaignPlan(waves=(WaveSpec(count=2), WaveSpec(percent=100.0)), gate=OPEN_GATE)
    campaign_id = env.launch(plan)
    engine = CampaignEngine(env.database, clock=env.clock, release_batch=3)
    first = [a.vin for a in env.view(campaign_id).assignments if a.wave == 1]
    for vin in first:
        record_events(env.database, vin, success(env.check_in(vin).assignment_id), clock=env.clock)
    released = [sum(outcome.released for outcome in engine.step()) for _ in range(4)]
    assert released == [3, 3, 2, 0]
    view = env.view(campaign_id)
    assert view.current_wave == 2
    assert view.counts[AssignmentState.QUEUED] == 0
    assert view.counts[AssignmentState.PENDING] == 8
    assert sum(bool(env.check_in(v).assignment_id) for v in vins if v not in first) == 8


def test_pacing_and_the_release_batch_whichever_is_smaller(env: Env) -> None:
    for n in range(1, 11):
        add_vehicle(env.database, n)
    campaign_id = env.launch(CampaignPlan(gate=OPEN_GATE, pacing=Pacing(max_per_minute=5)))
    assert env.view(campaign_id).counts[AssignmentState.PENDING] == 5
    engine = CampaignEngine(env.database, clock=env.clock, release_batch=2)
    env.clock.advance(seconds=61)
    assert sum(outcome.released for outcome in engine.step()) == 2
    assert sum(outcome.released for outcome in engine.step()) == 2
    assert sum(outcome.released for outcome in engine.step()) == 1  # the pacing budget's last
    assert env.view(campaign_id).counts[AssignmentState.QUEUED] == 0


def test_a_start_and_a_retry_release_no_more_than_the_release_batch(env: Env) -> None:
    vins = [add_vehicle(env.database, n) for n in range(1, 8)]
    actions = CampaignActions(env.database, clock=env.clock, release_batch=3)
    created = actions.create(
        ALICE, name="gw-2", bundle_id=env.bundle, selector=FleetSelector("sedan"),
        plan=CampaignPlan(gate=Gate(success_percent=100.0, max_failure_percent=None)),
    )  # fmt: skip
    actions.approve(BOB, created.campaign_id)
    campaign_id = actions.start(ALICE, created.campaign_id).campaign_id
    view = env.view(campaign_id)
    assert (view.counts[AssignmentState.PENDING], view.counts[AssignmentState.QUEUED]) == (3, 4)
    engine = CampaignEngine(env.database, clock=env.clock, release_batch=3)
    assert [sum(o.released for o in engine.step()) for _ in range(3)] == [3, 1, 0]
    for vin in vins:
        failed = event(env.check_in(vin).assignment_id, EventKind.FAILED, FailureType.DOWNLOAD)
        record_events(env.database, vin, [failed], clock=env.clock)
    env.engine.step()
    assert env.view(campaign_id).counts[AssignmentState.FAILED] == 7
    view, retried = actions.retry(ALICE, campaign_id, ["download"])
    assert retried == 7
    assert (view.counts[AssignmentState.PENDING], view.counts[AssignmentState.QUEUED]) == (3, 4)


def test_a_release_batch_below_one_is_refused(database: Database) -> None:
    with pytest.raises(InvalidArgumentError, match="at least 1"):
        CampaignEngine(database, release_batch=0)
    with pytest.raises(InvalidArgumentError, match="at least 1"):
        CampaignActions(database, release_batch=0)


def test_install_only_inside_the_maintenance_window(env: Env) -> None:
    inside_vin = add_vehicle(env.database, 1, site="plant-a")
    outside_vin = add_vehicle(env.database, 2, site="plant-a")
    anywhere_vin = add_vehicle(env.database, 3, site="dealer-b")
    window = MaintenanceWindow(site="plant-a", timezone="Europe/Berlin", start="22:00", end="05:00")
    campaign_id = env.launch(
        CampaignPlan(gate=Gate(success_percent=0.0, max_failure_percent=None), windows=(window,))
    )
    # 12:00 UTC is 13:00 in Berlin: download now, install from 22:00 Berlin (21:00 UTC).
    offer = env.check_in(inside_vin)
    assert offer.install_window is not None
    opens, closes = offer.install_window
    assert (opens.hour, closes.hour, (closes - opens).total_seconds()) == (21, 4, 7 * 3600)
    assert env.check_in(anywhere_vin).install_window is None
    outside = env.check_in(outside_vin).assignment_id
    record_events(env.database, outside_vin, success(outside, at=env.clock.now), clock=env.clock)
    inside = offer.assignment_id
    record_events(
        env.database, inside_vin, success(inside, at=opens + timedelta(hours=1)), clock=env.clock
    )
    anywhere = env.check_in(anywhere_vin).assignment_id
    record_events(env.database, anywhere_vin, success(anywhere, at=env.clock.now), clock=env.clock)
    states = {a.vin: a for a in env.view(campaign_id).assignments}
    assert states[inside_vin].state == AssignmentState.COMMITTED
    assert states[anywhere_vin].state == AssignmentState.COMMITTED
    assert states[outside_vin].state == AssignmentState.FAILED
    assert states[outside_vin].failure_type == "install"
    assert "outside the maintenance window 22:00-05:00" in states[outside_vin].last_event


def test_success_needs_a_healthy_report_before_commit(env: Env) -> None:
    vin = add_vehicle(env.database, 1)
    campaign_id = env.launch(CampaignPlan(gate=OPEN_GATE))
    offer = env.check_in(vin).assignment_id
    record_events(env.database, vin, [event(offer, EventKind.COMMITTED)], clock=env.clock)
    assert env.view(campaign_id).assignments[0].state == AssignmentState.IN_PROGRESS


def test_rollback_campaign_assigns_previous_images(env: Env) -> None:
    vins = [add_vehicle(env.database, n) for n in range(1, 4)]
    campaign_id = env.launch(CampaignPlan(gate=OPEN_GATE))
    offers = {vin: env.check_in(vin).assignment_id for vin in vins[:2]}
    record_events(env.database, vins[0], success(offers[vins[0]]), clock=env.clock)
    rollback = env.actions.rollback(ALICE, campaign_id, "brake ECU complaints")
    assert env.view(campaign_id).state == CampaignState.ABORTED
    assert rollback.rollback_of == campaign_id
    assert sorted(a.vin for a in rollback.assignments) == vins[:2]  # committed + in progress
    result = env.check_in(vins[0], installed=NEW_SHA)
    assert result.director is not None
    targets = json.loads(result.director.targets)["signed"]["targets"]
    assert list(targets) == ["gw-1.0"]
    assert not env.check_in(vins[2]).assignment_id  # never took the update
    record_events(env.database, vins[0], success(result.assignment_id), clock=env.clock)
    record_events(
        env.database, vins[1], success(env.check_in(vins[1]).assignment_id), clock=env.clock
    )
    env.engine.step()
    assert env.view(rollback.campaign_id).state == CampaignState.COMPLETED


def test_failure_gate_rolls_back_when_the_campaign_says_so(env: Env) -> None:
    vins = [add_vehicle(env.database, n) for n in range(1, 5)]
    plan = CampaignPlan(
        gate=Gate(success_percent=90.0, max_failure_count=0), rollback_on_failure=True
    )
    campaign_id = env.launch(plan)
    offers = {vin: env.check_in(vin).assignment_id for vin in vins}
    record_events(env.database, vins[0], success(offers[vins[0]]), clock=env.clock)
    record_events(
        env.database, vins[1],
        [
            event(offers[vins[1]], EventKind.HEALTH_FAILED),
            event(offers[vins[1]], EventKind.ROLLED_BACK),
        ],
        clock=env.clock,
    )  # fmt: skip
    env.engine.step()
    view = env.view(campaign_id)
    assert view.state == CampaignState.ABORTED
    assert "rolled back" in view.pause_reason
    rollback = env.view("c2")
    assert rollback.rollback_of == campaign_id
    assert sorted(a.vin for a in rollback.assignments) == [vins[0], vins[2], vins[3]]


def test_retry_by_failure_type(env: Env) -> None:
    vins = [add_vehicle(env.database, n) for n in range(1, 4)]
    campaign_id = env.launch(CampaignPlan(gate=Gate(success_percent=0.0, max_failure_percent=None)))
    offers = {vin: env.check_in(vin).assignment_id for vin in vins}
    record_events(
        env.database, vins[0], [event(offers[vins[0]], EventKind.FAILED, FailureType.DOWNLOAD)],
        clock=env.clock,
    )  # fmt: skip
    record_events(
        env.database, vins[1],
        [event(offers[vins[1]], EventKind.FAILED, FailureType.VERIFICATION)], clock=env.clock,
    )  # fmt: skip
    record_events(env.database, vins[2], success(offers[vins[2]]), clock=env.clock)
    env.engine.step()
    assert env.view(campaign_id).state == CampaignState.COMPLETED
    view, retried = env.actions.retry(ALICE, campaign_id, ["download"])
    assert retried == 1
    assert view.state == CampaignState.RUNNING
    states = {a.vin: a for a in view.assignments}
    assert states[vins[0]].state == AssignmentState.PENDING
    assert states[vins[0]].attempt == 2
    assert states[vins[1]].state == AssignmentState.FAILED
    again = env.check_in(vins[0]).assignment_id
    assert again == offers[vins[0]]
    record_events(env.database, vins[0], success(again), clock=env.clock)
    env.engine.step()
    view = env.view(campaign_id)
    assert view.state == CampaignState.COMPLETED
    assert view.counts[AssignmentState.COMMITTED] == 2


def test_late_joiners_join_the_open_wave(env: Env) -> None:
    add_vehicle(env.database, 1, tags=("fleet-x",))
    add_vehicle(env.database, 2)
    campaign_id = env.launch(
        CampaignPlan(waves=(WaveSpec(count=1), WaveSpec(percent=100.0)), gate=OPEN_GATE),
        FleetSelector("sedan", tags=("fleet-x",)),
    )
    assert [a.vin for a in env.view(campaign_id).assignments] == ["WSF00000000000001"]
    late = add_vehicle(env.database, 3, tags=("fleet-x", "late"))
    env.engine.step()
    env.engine.step()  # idempotent: joins once
    joined = {a.vin: a for a in env.view(campaign_id).assignments}
    assert set(joined) == {"WSF00000000000001", late}
    assert joined[late].wave == 1
    assert env.check_in(late).assignment_id


def test_a_vehicle_is_in_one_active_campaign_at_a_time(env: Env) -> None:
    vins = [add_vehicle(env.database, n) for n in range(1, 4)]
    first = env.launch(CampaignPlan(gate=OPEN_GATE), FleetSelector("sedan", vins=tuple(vins[:2])))
    second = env.launch(CampaignPlan(gate=OPEN_GATE))
    assert [a.vin for a in env.view(second).assignments] == [vins[2]]
    # A late vehicle busy elsewhere does not join; after the first campaign it is free.
    offer = env.check_in(vins[0])
    assert offer.assignment_id in {a.assignment_id for a in env.view(first).assignments}
    created = env.actions.create(
        ALICE, name="third", bundle_id=env.bundle,
        selector=FleetSelector("sedan", vins=tuple(vins[:2])), plan=CampaignPlan(),
    )  # fmt: skip
    env.actions.approve(BOB, created.campaign_id)
    with pytest.raises(FailedPreconditionError, match="2 busy"):
        env.actions.start(ALICE, created.campaign_id)


def test_a_resent_report_is_counted_once_and_changes_nothing(env: Env) -> None:
    vehicle = add_vehicle(env.database, 1)
    other = add_vehicle(env.database, 2)
    env.launch(CampaignPlan())
    offer = env.check_in(vehicle)
    downloaded = event(offer.assignment_id, EventKind.DOWNLOADED)
    first = record_events(env.database, vehicle, [downloaded])
    assert (first.accepted, first.duplicates) == (1, 0)

    installed = event(offer.assignment_id, EventKind.INSTALLED)
    again = record_events(env.database, vehicle, [downloaded, installed])
    assert (again.accepted, again.duplicates) == (1, 1)
    assert again.new_kinds == (EventKind.INSTALLED,)
    assert record_events(env.database, vehicle, [downloaded, installed]).duplicates == 2

    with pytest.raises(InvalidArgumentError, match="does not belong to vehicle"):
        record_events(env.database, other, [event(offer.assignment_id, EventKind.COMMITTED)])
    with env.database.session() as session:
        stored = session.exec(select(VehicleEventRecord.kind)).all()
    assert sorted(stored) == ["downloaded", "installed"]


def test_the_server_refuses_a_release_batch_below_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert server_main(["--data-dir", str(tmp_path), "--release-batch", "0"]) == 2
    assert "--release-batch must be at least 1" in capsys.readouterr().err
