"""What people do to campaigns: create, approve, start, pause, resume, abort, roll back, retry.

Every action checks the caller's right to it, changes the campaign in one transaction that
also holds its audit entry, and answers with the campaign as it now stands.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import CursorResult, func, insert, update
from sqlmodel import Session, col, select

from server.auth import audit
from server.auth.roles import Permission, Principal
from server.campaigns.engine import (
    RELEASE_BATCH,
    busy_elsewhere,
    campaign_public_id,
    checked_release_batch,
    open_wave,
    step_campaign,
)
from server.campaigns.events import FailureType
from server.campaigns.models import (
    FAILURE_STATES,
    Assignment,
    AssignmentState,
    Campaign,
    CampaignState,
)
from server.campaigns.plan import CampaignPlan
from server.campaigns.rollback import abort_assignments, start_rollback
from server.campaigns.views import CampaignView, parse_campaign_id, view_of
from server.campaigns.waves import plan_waves
from server.clock import Clock, system_clock
from server.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)
from server.fleet.models import Vehicle
from server.fleet.selectors import FleetSelector
from server.releases.catalog import parse_bundle_id
from server.releases.models import Bundle
from server.store import Database
from server.validation import check_name

MAX_REASON_CHARS = 512


class CampaignActions:
    """The release managers' actions on campaigns, with one clock for all of them.

    ``release_batch``: a start or a retry releases at most this many assignments at once,
    as one engine step does; the engine releases the rest.
    """

    def __init__(
        self,
        database: Database,
        *,
        clock: Clock = system_clock,
        release_batch: int = RELEASE_BATCH,
    ) -> None:
        self._database = database
        self._clock = clock
        self._release_batch = checked_release_batch(release_batch)

    def _locked(self, session: Session, public_id: str) -> Campaign:
        campaign = session.exec(
            select(Campaign).where(Campaign.id == parse_campaign_id(public_id)).with_for_update()
        ).first()
        if campaign is None:
            raise NotFoundError(f"campaign {public_id} does not exist: see 'staffel campaign list'")
        return campaign

    @staticmethod
    def _expect(campaign: Campaign, public_id: str, action: str, *states: CampaignState) -> None:
        if campaign.state not in states:
            allowed = " or ".join(s.value.replace("_", " ") for s in states)
            raise FailedPreconditionError(
                f"campaign {public_id} is {campaign.state.value.replace('_', ' ')}; "
                f"only a campaign that is {allowed} can be {action}"
            )

    def create(
        self,
        actor: Principal,
        *,
        name: str,
        bundle_id: str,
        selector: FleetSelector,
        plan: CampaignPlan,
        draft: bool = False,
    ) -> CampaignView:
        """Creates a campaign that awaits approval (or a draft)."""
        actor.require(Permission.MANAGE, "create campaigns")
        check_name(name, "campaign name")
        selector.validate()
        plan.validate()
        bundle_row_id = parse_bundle_id(bundle_id)
        now = self._clock()
        with self._database.session() as session:
            bundle = session.get(Bundle, bundle_row_id)
            if bundle is None:
                raise NotFoundError(f"bundle {bundle_id} does not exist")
            if selector.vehicle_model and selector.vehicle_model != bundle.vehicle_model:
                raise InvalidArgumentError(
                    f"bundle {bundle_id} is for model {bundle.vehicle_model}, "
                    f"not {selector.vehicle_model}"
                )
            if not selector.vehicle_model:
                selector = dataclasses.replace(selector, vehicle_model=bundle.vehicle_model)
            campaign = Campaign(
                name=name,
                bundle_id=bundle_row_id,
                selector=selector.to_json(),
                plan=plan.to_json(),
                state=CampaignState.DRAFT if draft else CampaignState.AWAITING_APPROVAL,
                author=actor.name,
                created_at=now,
            )
            session.add(campaign)
            session.flush()
            assert campaign.id is not None  # noqa: S101 - set by the flush
            audit.record(
                session,
                actor,
                "campaign.create",
                campaign_public_id(campaign.id),
                self._clock,
                bundle=bundle_id,
                selector=json.loads(campaign.selector),
                plan=json.loads(campaign.plan),
            )
            return view_of(session, campaign, self._clock())

    def submit(self, actor: Principal, public_id: str) -> CampaignView:
        """draft → awaiting approval."""
        actor.require(Permission.MANAGE, "submit campaigns")
        return self._transition(
            actor,
            public_id,
            verb="submit",
            sources=(CampaignState.DRAFT,),
            target=CampaignState.AWAITING_APPROVAL,
        )

    def approve(self, actor: Principal, public_id: str, reason: str = "") -> CampaignView:
        """awaiting approval → approved, by someone other than the author."""
        actor.require(Permission.APPROVE, "approve campaigns")
        with self._database.session() as session:
            campaign = self._locked(session, public_id)
            self._expect(campaign, public_id, "approved", CampaignState.AWAITING_APPROVAL)
            if campaign.author == actor.name:
                raise PermissionDeniedError(
                    f"{actor.name} created campaign {public_id} and cannot approve it: "
                    "a second person must approve (four-eyes rule)"
                )
            campaign.state = CampaignState.APPROVED
            campaign.approved_by = actor.name
            session.add(campaign)
            audit.record(session, actor, "campaign.approve", public_id, self._clock, reason=reason)
            return view_of(session, campaign, self._clock())

    def start(self, actor: Principal, public_id: str) -> CampaignView:
        """approved → running: plans the waves of the selected free vehicles, opens wave 1.

        Raises:
            FailedPreconditionError: not approved, or no selected vehicle is free.
        """
        actor.require(Permission.MANAGE, "start campaigns")
        now = self._clock()
        with self._database.session() as session:
            campaign = self._locked(session, public_id)
            self._expect(campaign, public_id, "started", CampaignState.APPROVED)
            assert campaign.id is not None  # noqa: S101 - persisted campaigns have ids
            plan = CampaignPlan.from_json(campaign.plan)
            where = FleetSelector.from_json(campaign.selector).conditions()
            selected = session.exec(select(func.count()).select_from(Vehicle).where(*where)).one()
            free = session.exec(
                select(Vehicle.vin, Vehicle.variant).where(*where, ~busy_elsewhere(campaign.id))
            ).all()
            if not free:
                raise FailedPreconditionError(
                    f"campaign {public_id} selects no vehicle that is free "
                    f"({selected} match, {selected - len(free)} busy in other campaigns)"
                )
            waves = plan_waves(campaign.id, [(vin, variant) for vin, variant in free], plan.waves)
            rows = [
                {
                    "campaign_id": campaign.id,
                    "vin": vin,
                    "wave": wave,
                    "state": AssignmentState.QUEUED,
                    "updated_at": now,
                }
                for vin, wave in sorted(waves.items())
            ]
            for start in range(0, len(rows), 5000):
                session.execute(insert(Assignment), rows[start : start + 5000])
            campaign.state = CampaignState.RUNNING
            campaign.started_at = now
            campaign.joined_until = session.exec(select(func.max(Vehicle.changed_at))).one()
            open_wave(session, campaign, now)
            audit.record(
                session,
                actor,
                "campaign.start",
                public_id,
                self._clock,
                vehicles=len(rows),
                busy=selected - len(free),
            )
            session.add(campaign)
            session.flush()
            step_campaign(session, campaign.id, now, release_batch=self._release_batch)
            return view_of(session, campaign, now)

    def pause(self, actor: Principal, public_id: str, reason: str = "") -> CampaignView:
        """running → paused: no new vehicle gets the update; vehicles in progress finish."""
        actor.require(Permission.MANAGE, "pause campaigns")
        return self._transition(
            actor,
            public_id,
            verb="pause",
            sources=(CampaignState.RUNNING,),
            target=CampaignState.PAUSED,
            reason=reason or f"paused by {actor.name}",
        )

    def resume(self, actor: Principal, public_id: str, reason: str = "") -> CampaignView:
        """paused → running; the failure gates count only reports that come in from now on."""
        actor.require(Permission.MANAGE, "resume campaigns")
        with self._database.session() as session:
            campaign = self._locked(session, public_id)
            self._expect(campaign, public_id, "resumed", CampaignState.PAUSED)
            now = self._clock()
            campaign.state = CampaignState.RUNNING
            campaign.pause_reason = ""
            campaign.gate_reset_at = now
            campaign.gate_met_at = None
            session.add(campaign)
            audit.record(session, actor, "campaign.resume", public_id, self._clock, reason=reason)
            return view_of(session, campaign, now)

    def abort(self, actor: Principal, public_id: str, reason: str = "") -> CampaignView:
        """Ends the campaign; assignments without an outcome are canceled."""
        actor.require(Permission.MANAGE, "abort campaigns")
        with self._database.session() as session:
            campaign = self._locked(session, public_id)
            self._expect(
                campaign,
                public_id,
                "aborted",
                CampaignState.DRAFT,
                CampaignState.AWAITING_APPROVAL,
                CampaignState.APPROVED,
                CampaignState.RUNNING,
                CampaignState.PAUSED,
            )
            assert campaign.id is not None  # noqa: S101 - persisted campaigns have ids
            now = self._clock()
            why = reason or f"aborted by {actor.name}"
            abort_assignments(session, campaign.id, now, f"canceled: {why}")
            campaign.state = CampaignState.ABORTED
            campaign.pause_reason = why[:MAX_REASON_CHARS]
            campaign.completed_at = now
            session.add(campaign)
            audit.record(session, actor, "campaign.abort", public_id, self._clock, reason=reason)
            return view_of(session, campaign, now)

    def rollback(self, actor: Principal, public_id: str, reason: str = "") -> CampaignView:
        """Aborts the campaign and starts its rollback; returns the rollback campaign."""
        actor.require(Permission.MANAGE, "roll back campaigns")
        with self._database.session() as session:
            campaign = self._locked(session, public_id)
            self._expect(
                campaign,
                public_id,
                "rolled back",
                CampaignState.RUNNING,
                CampaignState.PAUSED,
                CampaignState.COMPLETED,
            )
            now = self._clock()
            rollback = start_rollback(
                session,
                campaign,
                actor=actor,
                now=now,
                reason=reason or f"requested by {actor.name}",
            )
            return view_of(session, rollback, now)

    def retry(
        self, actor: Principal, public_id: str, failure_types: Sequence[str]
    ) -> tuple[CampaignView, int]:
        """Queues again the vehicles that failed with one of ``failure_types``.

        A completed campaign runs again; a vehicle busy in another campaign is left out.
        Returns the campaign and how many vehicles were queued.
        """
        actor.require(Permission.MANAGE, "retry campaigns")
        if not failure_types:
            raise InvalidArgumentError(
                "name the failure types to retry, e.g. download verification install health "
                "rolled_back timed_out"
            )
        types = []
        for text in failure_types:
            try:
                failure = FailureType(text)
            except ValueError:
                failure = FailureType.NONE
            if failure == FailureType.NONE:
                valid = ", ".join(t.value for t in FailureType if t != FailureType.NONE)
                raise InvalidArgumentError(f"failure type {text!r} is not one of {valid}")
            types.append(failure.value)
        now = self._clock()
        with self._database.session() as session:
            campaign = self._locked(session, public_id)
            self._expect(
                campaign,
                public_id,
                "retried",
                CampaignState.RUNNING,
                CampaignState.PAUSED,
                CampaignState.COMPLETED,
            )
            assert campaign.id is not None  # noqa: S101 - persisted campaigns have ids
            free_vins = select(Vehicle.vin).where(~busy_elsewhere(campaign.id))
            result = cast(
                CursorResult[Any],
                session.execute(
                    update(Assignment)
                    .where(col(Assignment.campaign_id) == campaign.id)
                    .where(col(Assignment.state).in_(FAILURE_STATES))
                    .where(col(Assignment.failure_type).in_(types))
                    .where(col(Assignment.vin).in_(free_vins.scalar_subquery()))
                    .values(
                        state=AssignmentState.QUEUED,
                        attempt=col(Assignment.attempt) + 1,
                        failure_type="",
                        healthy=False,
                        released_at=None,
                        offered_at=None,
                        reported_at=None,
                        updated_at=now,
                        last_event=f"retry requested by {actor.name}",
                    )
                    .execution_options(synchronize_session=False)
                ),
            )
            retried = int(result.rowcount or 0)
            if retried and campaign.state == CampaignState.COMPLETED:
                campaign.state = CampaignState.RUNNING
                campaign.completed_at = None
            session.add(campaign)
            audit.record(
                session,
                actor,
                "campaign.retry",
                public_id,
                self._clock,
                failure_types=types,
                vehicles=retried,
            )
            session.flush()
            step_campaign(session, campaign.id, now, release_batch=self._release_batch)
            session.expire_all()
            refreshed = session.get(Campaign, campaign.id)
            assert refreshed is not None  # noqa: S101 - locked above
            return view_of(session, refreshed, now), retried

    def _transition(
        self,
        actor: Principal,
        public_id: str,
        *,
        verb: str,
        sources: tuple[CampaignState, ...],
        target: CampaignState,
        reason: str = "",
    ) -> CampaignView:
        with self._database.session() as session:
            campaign = self._locked(session, public_id)
            self._expect(campaign, public_id, f"{verb}ed".replace("ee", "e"), *sources)
            campaign.state = target
            if target == CampaignState.PAUSED:
                campaign.pause_reason = reason[:MAX_REASON_CHARS]
            session.add(campaign)
            audit.record(session, actor, f"campaign.{verb}", public_id, self._clock, reason=reason)
            return view_of(session, campaign, self._clock())
