"""Creating, starting and reading campaigns."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlmodel import Session, col, select

from server.campaigns.models import (
    FINAL_ASSIGNMENT_STATES,
    Assignment,
    AssignmentState,
    Campaign,
    CampaignState,
)
from server.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from server.fleet.models import Vehicle
from server.releases.catalog import bundle_public_id, parse_bundle_id
from server.releases.models import Bundle
from server.store import Database
from server.validation import check_name, check_vin

CAMPAIGN_PREFIX = "c"
MAX_SELECTOR_VINS = 10_000


@dataclass(frozen=True)
class FleetSelector:
    """Which vehicles a campaign is for: a model, a list of VINs, or both."""

    vehicle_model: str = ""
    vins: tuple[str, ...] = ()

    def validate(self) -> None:
        """Raises InvalidArgumentError unless the selector is well formed and not empty."""
        if self.vehicle_model:
            check_name(self.vehicle_model, "vehicle model")
        if len(self.vins) > MAX_SELECTOR_VINS:
            raise InvalidArgumentError(f"a selector lists at most {MAX_SELECTOR_VINS} VINs")
        for vin in self.vins:
            check_vin(vin)
        if not self.vehicle_model and not self.vins:
            raise InvalidArgumentError("a selector needs a vehicle model, VINs, or both")


@dataclass(frozen=True)
class AssignmentView:
    """One vehicle's progress in a campaign."""

    assignment_id: str
    vin: str
    state: AssignmentState
    last_event: str
    updated_at: datetime


@dataclass(frozen=True)
class CampaignView:
    """A campaign with its counts and the progress of each vehicle."""

    campaign_id: str
    name: str
    bundle_id: str
    selector: FleetSelector
    state: CampaignState
    created_at: datetime
    counts: Counter[AssignmentState] = field(default_factory=Counter)
    assignments: tuple[AssignmentView, ...] = ()


def campaign_public_id(campaign_id: int) -> str:
    """The id shown to users, e.g. ``c1``."""
    return f"{CAMPAIGN_PREFIX}{campaign_id}"


def parse_campaign_id(public_id: str) -> int:
    """The row id behind ``c1``; InvalidArgumentError for anything else."""
    digits = public_id.removeprefix(CAMPAIGN_PREFIX)
    if not public_id.startswith(CAMPAIGN_PREFIX) or not digits.isdigit() or len(digits) > 18:
        raise InvalidArgumentError(f"campaign id {public_id!r} is not valid (expected e.g. 'c1')")
    return int(digits)


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def create_campaign(
    database: Database, *, name: str, bundle_id: str, selector: FleetSelector
) -> CampaignView:
    """Creates a campaign in the draft state."""
    check_name(name, "campaign name")
    selector.validate()
    bundle_row_id = parse_bundle_id(bundle_id)
    with database.session() as session:
        bundle = session.get(Bundle, bundle_row_id)
        if bundle is None:
            raise NotFoundError(f"bundle {bundle_id} does not exist")
        if selector.vehicle_model and selector.vehicle_model != bundle.vehicle_model:
            raise InvalidArgumentError(
                f"bundle {bundle_id} is for model {bundle.vehicle_model}, "
                f"not {selector.vehicle_model}"
            )
        campaign = Campaign(
            name=name,
            bundle_id=bundle_row_id,
            selector_model=selector.vehicle_model or bundle.vehicle_model,
            selector_vins=" ".join(selector.vins),
            created_at=_now(),
        )
        session.add(campaign)
        session.flush()
        return _view(session, campaign)


def _select_vehicles(session: Session, campaign: Campaign) -> Sequence[str]:
    query = select(Vehicle.vin).where(Vehicle.model == campaign.selector_model)
    if campaign.selector_vins:
        query = query.where(col(Vehicle.vin).in_(campaign.selector_vins.split()))
    return session.exec(query.order_by(col(Vehicle.vin))).all()


def _busy_vins(session: Session, vins: Sequence[str]) -> set[str]:
    """VINs that hold an unfinished assignment of another running campaign."""
    rows = session.exec(
        select(Assignment.vin)
        .join(Campaign, col(Campaign.id) == col(Assignment.campaign_id))
        .where(col(Assignment.vin).in_(vins))
        .where(Campaign.state == CampaignState.RUNNING)
        .where(col(Assignment.state).not_in(FINAL_ASSIGNMENT_STATES))
    ).all()
    return set(rows)


def start_campaign(database: Database, public_id: str) -> CampaignView:
    """Starts a draft campaign: every selected vehicle gets an assignment.

    A vehicle busy in another running campaign is left out (one active campaign at a time).

    Raises:
        FailedPreconditionError: the campaign is not a draft, or selects no free vehicle.
    """
    campaign_id = parse_campaign_id(public_id)
    with database.session() as session:
        campaign = session.exec(
            select(Campaign).where(Campaign.id == campaign_id).with_for_update()
        ).first()
        if campaign is None:
            raise NotFoundError(f"campaign {public_id} does not exist")
        if campaign.state != CampaignState.DRAFT:
            raise FailedPreconditionError(
                f"campaign {public_id} is {campaign.state.value}; only a draft can be started"
            )
        vins = _select_vehicles(session, campaign)
        busy = _busy_vins(session, vins) if vins else set()
        free = [vin for vin in vins if vin not in busy]
        if not free:
            raise FailedPreconditionError(
                f"campaign {public_id} selects no vehicle that is free "
                f"({len(vins)} match, {len(busy)} busy in other campaigns)"
            )
        now = _now()
        for vin in free:
            session.add(Assignment(campaign_id=campaign_id, vin=vin, updated_at=now))
        campaign.state = CampaignState.RUNNING
        campaign.started_at = now
        session.add(campaign)
        session.flush()
        return _view(session, campaign)


def get_campaign(database: Database, public_id: str) -> CampaignView:
    """The campaign with its counts and each vehicle's progress."""
    campaign_id = parse_campaign_id(public_id)
    with database.session() as session:
        campaign = session.get(Campaign, campaign_id)
        if campaign is None:
            raise NotFoundError(f"campaign {public_id} does not exist")
        return _view(session, campaign)


def complete_if_done(session: Session, campaign_id: int) -> None:
    """Marks a running campaign completed once every assignment has its outcome.

    The campaign row is locked first, so that of two vehicles reporting their final
    outcome at once, the second sees the first one's outcome and completes the campaign.
    """
    campaign = session.exec(
        select(Campaign).where(Campaign.id == campaign_id).with_for_update()
    ).first()
    if campaign is None or campaign.state != CampaignState.RUNNING:
        return
    open_assignment = session.exec(
        select(Assignment.id)
        .where(Assignment.campaign_id == campaign_id)
        .where(col(Assignment.state).not_in(FINAL_ASSIGNMENT_STATES))
        .limit(1)
    ).first()
    if open_assignment is None:
        campaign.state = CampaignState.COMPLETED
        campaign.completed_at = _now()
        session.add(campaign)


def _view(session: Session, campaign: Campaign) -> CampaignView:
    assert campaign.id is not None  # noqa: S101 - persisted campaigns have ids
    assignments = session.exec(
        select(Assignment)
        .where(Assignment.campaign_id == campaign.id)
        .order_by(col(Assignment.vin))
    ).all()
    return CampaignView(
        campaign_id=campaign_public_id(campaign.id),
        name=campaign.name,
        bundle_id=bundle_public_id(campaign.bundle_id),
        selector=FleetSelector(
            vehicle_model=campaign.selector_model, vins=tuple(campaign.selector_vins.split())
        ),
        state=campaign.state,
        created_at=campaign.created_at,
        counts=Counter(a.state for a in assignments),
        assignments=tuple(
            AssignmentView(
                assignment_id=str(a.id),
                vin=a.vin,
                state=a.state,
                last_event=a.last_event,
                updated_at=a.updated_at,
            )
            for a in assignments
        ),
    )
