"""Campaigns as release managers see them: counts per wave, gate verdicts, vehicles."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from sqlmodel import Session, col, select

from server.campaigns.engine import opened_moments, wave_counts
from server.campaigns.gates import WaveCounts
from server.campaigns.models import (
    Assignment,
    AssignmentState,
    Campaign,
    CampaignKind,
    CampaignState,
)
from server.campaigns.plan import CampaignPlan
from server.clock import Clock, as_utc, system_clock
from server.errors import InvalidArgumentError, NotFoundError
from server.fleet.selectors import FleetSelector
from server.releases.catalog import bundle_public_id
from server.store import Database

CAMPAIGN_PREFIX = "c"
DEFAULT_ASSIGNMENT_LIMIT = 1000
MAX_ASSIGNMENT_LIMIT = 100_000


def parse_campaign_id(public_id: str) -> int:
    """The row id behind ``c1``; InvalidArgumentError for anything else."""
    digits = public_id.removeprefix(CAMPAIGN_PREFIX)
    if not public_id.startswith(CAMPAIGN_PREFIX) or not digits.isdigit() or len(digits) > 18:
        raise InvalidArgumentError(f"campaign id {public_id!r} is not valid (expected e.g. 'c1')")
    return int(digits)


@dataclass(frozen=True)
class AssignmentView:
    """One vehicle's progress in a campaign."""

    assignment_id: str
    vin: str
    state: AssignmentState
    last_event: str
    updated_at: datetime
    wave: int
    failure_type: str
    attempt: int


@dataclass(frozen=True)
class WaveView:
    """One wave: its reach, counts, status and the gate's verdict."""

    wave: int
    reach: str
    counts: WaveCounts
    status: str  # waiting, open, closed
    opened_at: datetime | None
    gate: str


@dataclass(frozen=True)
class CampaignView:
    """A campaign with its counts, waves, and (some of) its vehicles."""

    campaign_id: str
    name: str
    kind: CampaignKind
    bundle_id: str
    rollback_of: str
    selector: FleetSelector
    plan: CampaignPlan
    state: CampaignState
    current_wave: int
    author: str
    approved_by: str
    pause_reason: str
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    counts: Counter[AssignmentState] = field(default_factory=Counter)
    waves: tuple[WaveView, ...] = ()
    assignments: tuple[AssignmentView, ...] = ()
    assignments_omitted: int = 0


def _gate_text(  # noqa: PLR0911 - one verdict per gate situation reads best flat
    campaign: Campaign, plan: CampaignPlan, wave: int, counts: WaveCounts, now: datetime
) -> str:
    gate = plan.gate
    if wave > campaign.current_wave:
        return "waiting"
    if wave < campaign.current_wave:
        return "passed"
    if campaign.state == CampaignState.PAUSED and campaign.pause_reason:
        return f"paused: {campaign.pause_reason}"
    if counts.queued:
        return f"releasing ({counts.queued} queued by pacing)"
    if counts.reports < gate.min_reports:
        return f"waiting for reports ({counts.reports} of {gate.min_reports})"
    if counts.success_percent < gate.success_percent:
        return f"success {counts.success_percent:.1f}% below {gate.success_percent:g}%"
    if wave == len(plan.waves):
        return f"success {counts.success_percent:.1f}%: last wave"
    if campaign.gate_met_at is not None:
        until = as_utc(campaign.gate_met_at) + gate.soak
        if until > now:
            return f"soaking until {until:%Y-%m-%d %H:%M:%S} UTC"
    return f"success {counts.success_percent:.1f}%: next wave at the engine's next step"


def view_of(
    session: Session,
    campaign: Campaign,
    now: datetime,
    assignment_limit: int = DEFAULT_ASSIGNMENT_LIMIT,
) -> CampaignView:
    """The campaign's view inside ``session``."""
    assert campaign.id is not None  # noqa: S101 - persisted campaigns have ids
    plan = CampaignPlan.from_json(campaign.plan)
    per_wave = wave_counts(session, campaign.id)
    opened = opened_moments(campaign)
    totals: Counter[AssignmentState] = Counter()
    for counts in per_wave.values():
        for state in AssignmentState:
            totals[state] += getattr(counts, state.value)
    waves = tuple(
        WaveView(
            wave=number,
            reach=spec.label(),
            counts=per_wave.get(number, WaveCounts()),
            status=(
                "waiting"
                if number > campaign.current_wave
                else "open"
                if number == campaign.current_wave
                else "closed"
            ),
            opened_at=opened[number - 1] if number <= len(opened) else None,
            gate=_gate_text(campaign, plan, number, per_wave.get(number, WaveCounts()), now),
        )
        for number, spec in enumerate(plan.waves, start=1)
    )
    rows = (
        session.exec(
            select(Assignment)
            .where(Assignment.campaign_id == campaign.id)
            .order_by(col(Assignment.vin))
            .limit(assignment_limit)
        ).all()
        if assignment_limit
        else []
    )
    return CampaignView(
        campaign_id=f"{CAMPAIGN_PREFIX}{campaign.id}",
        name=campaign.name,
        kind=campaign.kind,
        bundle_id=bundle_public_id(campaign.bundle_id),
        rollback_of=f"{CAMPAIGN_PREFIX}{campaign.rollback_of}" if campaign.rollback_of else "",
        selector=FleetSelector.from_json(campaign.selector),
        plan=plan,
        state=campaign.state,
        current_wave=campaign.current_wave,
        author=campaign.author,
        approved_by=campaign.approved_by,
        pause_reason=campaign.pause_reason,
        created_at=campaign.created_at,
        started_at=campaign.started_at,
        completed_at=campaign.completed_at,
        counts=totals,
        waves=waves,
        assignments=tuple(
            AssignmentView(
                assignment_id=str(a.id),
                vin=a.vin,
                state=a.state,
                last_event=a.last_event,
                updated_at=a.updated_at,
                wave=a.wave,
                failure_type=a.failure_type,
                attempt=a.attempt,
            )
            for a in rows
        ),
        assignments_omitted=sum(totals.values()) - len(rows),
    )


def get_campaign(
    database: Database,
    public_id: str,
    *,
    assignment_limit: int = DEFAULT_ASSIGNMENT_LIMIT,
    clock: Clock = system_clock,
) -> CampaignView:
    """The campaign with its counts, waves and up to ``assignment_limit`` vehicles."""
    campaign_id = parse_campaign_id(public_id)
    if not 0 <= assignment_limit <= MAX_ASSIGNMENT_LIMIT:
        raise InvalidArgumentError(f"assignment limit must be 0 to {MAX_ASSIGNMENT_LIMIT}")
    with database.session() as session:
        campaign = session.get(Campaign, campaign_id)
        if campaign is None:
            raise NotFoundError(f"campaign {public_id} does not exist: see 'staffel campaign list'")
        return view_of(session, campaign, clock(), assignment_limit)


def list_campaigns(database: Database, *, clock: Clock = system_clock) -> list[CampaignView]:
    """Every campaign, newest first, without per-vehicle rows."""
    with database.session() as session:
        campaigns = session.exec(select(Campaign).order_by(col(Campaign.id).desc())).all()
        return [view_of(session, c, clock(), 0) for c in campaigns]
