"""The campaign engine's step: late joiners, gates, waves, pacing, completion.

One step of one campaign is one transaction that locks the campaign row (``FOR UPDATE`` on
PostgreSQL), so two servers or a killed one never double-count. Every change is a set-based
statement over the campaign's assignments: the cost grows with the rows touched, not with
the fleet. A step changes nothing when nothing changed, so it is safe to run at any time,
on an interval in the server and directly in tests.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Exists, and_, exists, func, insert, literal, not_, or_, update
from sqlalchemy import select as sql_select
from sqlmodel import Session, SQLModel, col, select

from server.auth import audit
from server.auth.roles import ENGINE
from server.campaigns.gates import WaveCounts
from server.campaigns.models import (
    ACTIVE_CAMPAIGN_STATES,
    FINAL_ASSIGNMENT_STATES,
    Assignment,
    AssignmentState,
    Campaign,
    CampaignKind,
    CampaignState,
)
from server.campaigns.plan import CampaignPlan
from server.clock import Clock, as_utc, system_clock
from server.errors import InvalidArgumentError
from server.fleet.models import Vehicle
from server.fleet.selectors import FleetSelector
from server.staging.gate import DEFAULT_WAIT, held_sites
from server.store import Database

log = logging.getLogger(__name__)

# Vehicles changed this long before the newest change seen are looked at again, so a
# registration that committed late is not missed; the anti-join makes it harmless.
JOIN_LOOKBACK = timedelta(seconds=10)
PACING_PERIOD = timedelta(minutes=1)
# At most this many assignments become pending in one step: a step's transaction, and the
# row locks that make check-ins of those vehicles wait, stay bounded whatever the wave's
# size (50,000 on PostgreSQL: 0.5-0.8 s in the one UPDATE). A larger wave opens over
# consecutive steps, earlier waves first.
RELEASE_BATCH = 10_000
_ASSIGNMENT_TABLE = SQLModel.metadata.tables["campaign_assignment"]


def campaign_public_id(campaign_id: int) -> str:
    """The id shown to users, e.g. ``c1``."""
    return f"c{campaign_id}"


def busy_elsewhere(campaign_id: int) -> Exists:
    """SQL: the vehicle holds an unfinished assignment in another active campaign."""
    other = _ASSIGNMENT_TABLE.alias("other")
    return exists(
        select(other.c.id)
        .join(Campaign, col(Campaign.id) == other.c.campaign_id)
        .where(
            and_(
                other.c.vin == col(Vehicle.vin),
                other.c.campaign_id != campaign_id,
                other.c.state.not_in(list(FINAL_ASSIGNMENT_STATES)),
                col(Campaign.state).in_(list(ACTIVE_CAMPAIGN_STATES)),
            )
        )
    )


def wave_counts(
    session: Session, campaign_id: int, *, reported_since: datetime | None = None
) -> dict[int, WaveCounts]:
    """Counts per wave; with ``reported_since``, only outcomes reported from then on."""
    query = (
        select(Assignment.wave, Assignment.state, func.count())
        .where(Assignment.campaign_id == campaign_id)
        .group_by(col(Assignment.wave), col(Assignment.state))
    )
    if reported_since is not None:
        query = query.where(col(Assignment.reported_at) >= reported_since)
    by_wave: dict[int, dict[AssignmentState, int]] = defaultdict(dict)
    for wave, state, number in session.exec(query).all():
        by_wave[wave][AssignmentState(state)] = number
    return {wave: WaveCounts.of(states) for wave, states in by_wave.items()}


def opened_moments(campaign: Campaign) -> list[datetime]:
    """When each opened wave opened."""
    return [datetime.fromisoformat(text) for text in json.loads(campaign.waves_opened)]


def open_wave(session: Session, campaign: Campaign, now: datetime) -> None:
    """Opens the next wave (its assignments are released by the pacing step)."""
    campaign.current_wave += 1
    campaign.waves_opened = json.dumps(
        [*json.loads(campaign.waves_opened), now.isoformat()], separators=(",", ":")
    )
    campaign.gate_met_at = None
    assert campaign.id is not None  # noqa: S101 - persisted campaigns have ids
    audit.record(
        session,
        ENGINE,
        "campaign.wave_open",
        campaign_public_id(campaign.id),
        lambda: now,
        wave=campaign.current_wave,
    )


def _join_late_vehicles(
    session: Session, campaign: Campaign, now: datetime, *, settled: datetime | None = None
) -> None:
    """Vehicles that match the selector since the last step join the open wave.

    ``settled``: a moment up to which every change is known to have been looked at by an
    earlier step that ran after those changes committed; the look-back stops there.
    """
    if campaign.kind != CampaignKind.UPDATE or campaign.joined_until is None:
        return
    assert campaign.id is not None  # noqa: S101 - persisted campaigns have ids
    since = as_utc(campaign.joined_until) - JOIN_LOOKBACK
    changed = col(Vehicle.changed_at) >= since
    if settled is not None and settled >= since:
        # Without this, every step re-reads the whole last import (all changed within the
        # look-back of the newest change, an import's rows at one moment) for as long as
        # no vehicle changes again. Every change up to ``settled`` was seen: look past it.
        changed = col(Vehicle.changed_at) > settled
    newest: datetime | None = session.exec(
        select(func.max(Vehicle.changed_at)).where(changed)
    ).one()
    if newest is None:
        return
    mine = exists(
        select(Assignment.id).where(
            and_(col(Assignment.campaign_id) == campaign.id, col(Assignment.vin) == Vehicle.vin)
        )
    )
    joining = sql_select(
        literal(campaign.id),
        col(Vehicle.vin),
        literal(campaign.current_wave),
        literal(AssignmentState.QUEUED, _ASSIGNMENT_TABLE.c.state.type),
        literal(now),
        literal("joined after the start"),
    ).where(
        changed,
        *FleetSelector.from_json(campaign.selector).conditions(),
        ~mine,
        ~busy_elsewhere(campaign.id),
    )
    result = cast(
        CursorResult[Any],
        session.execute(
            insert(Assignment).from_select(
                ["campaign_id", "vin", "wave", "state", "updated_at", "last_event"], joining
            )
        ),
    )
    if result.rowcount:
        audit.record(
            session,
            ENGINE,
            "campaign.late_join",
            campaign_public_id(campaign.id),
            lambda: now,
            vehicles=result.rowcount,
            wave=campaign.current_wave,
        )
    campaign.joined_until = newest


def _release(
    session: Session,
    campaign: Campaign,
    plan: CampaignPlan,
    now: datetime,
    wait: timedelta,
    *,
    batch: int,
) -> int:
    """Queued assignments of the open waves become pending, within the pacing budget and
    at most ``batch`` of them; returns how many.

    An update's wave opens at a site with a relay only once the relay holds the bundle, or
    ``wait`` after the engine first asked (``server.staging.gate``).
    """
    assert campaign.id is not None  # noqa: S101 - persisted campaigns have ids
    queued = (
        select(Assignment.id)
        .where(Assignment.campaign_id == campaign.id)
        .where(col(Assignment.wave) <= campaign.current_wave)
        .where(Assignment.state == AssignmentState.QUEUED)
    )
    if campaign.kind == CampaignKind.UPDATE:
        held = held_sites(
            session,
            campaign_id=campaign.id,
            bundle_id=campaign.bundle_id,
            up_to_wave=campaign.current_wave,
            now=now,
            wait=wait,
        )
        if held:
            at_site = [
                and_(
                    col(Assignment.wave) == wave,
                    col(Assignment.vin).in_(select(Vehicle.vin).where(Vehicle.site == site)),
                )
                for wave, site in held
            ]
            queued = queued.where(not_(or_(*at_site)))
    budget = batch
    if plan.pacing.max_per_minute:
        released_recently = session.exec(
            select(func.count())
            .select_from(Assignment)
            .where(Assignment.campaign_id == campaign.id)
            .where(col(Assignment.released_at) > now - PACING_PERIOD)
        ).one()
        paced = plan.pacing.budget(int(released_recently))
        budget = budget if paced is None else min(budget, paced)
    if budget == 0:
        return 0
    queued = queued.order_by(col(Assignment.wave), col(Assignment.id)).limit(budget)
    result = cast(
        CursorResult[Any],
        session.execute(
            update(Assignment)
            .where(col(Assignment.id).in_(queued.scalar_subquery()))
            .values(state=AssignmentState.PENDING, released_at=now, updated_at=now)
            .execution_options(synchronize_session=False)
        ),
    )
    return int(result.rowcount)


@dataclass(frozen=True)
class StepOutcome:
    """What one step did to one campaign."""

    campaign_id: str
    state: CampaignState
    wave: int
    released: int = 0  # assignments this step made pending


def step_campaign(
    session: Session,
    campaign_id: int,
    now: datetime,
    *,
    staging_wait: timedelta = DEFAULT_WAIT,
    settled: datetime | None = None,
    release_batch: int = RELEASE_BATCH,
) -> StepOutcome | None:
    """One engine step of one campaign inside ``session``; None if it is not running.

    ``staging_wait`` is how long a site's relay that has not staged the bundle may hold
    back a wave at its site. ``settled``: see :func:`_join_late_vehicles` (None: the full
    look-back). ``release_batch``: at most this many assignments are released.
    """
    from server.campaigns.rollback import start_rollback  # noqa: PLC0415 - import cycle

    campaign = session.exec(
        select(Campaign).where(Campaign.id == campaign_id).with_for_update()
    ).first()
    if campaign is None or campaign.state != CampaignState.RUNNING:
        return None
    public_id = campaign_public_id(campaign_id)
    plan = CampaignPlan.from_json(campaign.plan)
    gate = plan.gate
    _join_late_vehicles(session, campaign, now, settled=settled)
    counts = wave_counts(session, campaign_id)
    reset = campaign.gate_reset_at
    judged = counts if reset is None else wave_counts(session, campaign_id, reported_since=reset)
    for wave in range(1, campaign.current_wave + 1):
        reason = gate.failure_tripped(judged.get(wave, WaveCounts()))
        if reason is None:
            continue
        campaign.state = CampaignState.PAUSED
        campaign.pause_reason = f"failure gate of wave {wave}: {reason}"
        campaign.gate_met_at = None
        session.add(campaign)
        audit.record(session, ENGINE, "campaign.auto_pause", public_id, lambda: now, reason=reason)
        log.warning("campaign %s paused: %s", public_id, campaign.pause_reason)
        if plan.rollback_on_failure:
            start_rollback(session, campaign, actor=ENGINE, now=now, reason=reason)
        return StepOutcome(public_id, campaign.state, campaign.current_wave)
    current = counts.get(campaign.current_wave, WaveCounts())
    if gate.success_holds(current):
        if campaign.gate_met_at is None:
            campaign.gate_met_at = now
    else:
        campaign.gate_met_at = None
    met_at = None if campaign.gate_met_at is None else as_utc(campaign.gate_met_at)
    if campaign.current_wave < len(plan.waves) and gate.soaked(met_at, now):
        open_wave(session, campaign, now)
    # The counts were taken after late joiners were queued, so they tell whether the open
    # waves hold anything to release: a step with nothing queued skips the pacing reads.
    queued = sum(c.queued for wave, c in counts.items() if wave <= campaign.current_wave)
    released = (
        _release(session, campaign, plan, now, staging_wait, batch=release_batch) if queued else 0
    )
    unfinished = sum(
        c.queued + c.pending + c.in_progress
        for wave, c in counts.items()
        if wave <= campaign.current_wave
    )
    later_waves = sum(c.total for wave, c in counts.items() if wave > campaign.current_wave)
    if campaign.current_wave == len(plan.waves) and unfinished == 0 and later_waves == 0:
        campaign.state = CampaignState.COMPLETED
        campaign.completed_at = now
        audit.record(session, ENGINE, "campaign.complete", public_id, lambda: now)
    session.add(campaign)
    return StepOutcome(public_id, campaign.state, campaign.current_wave, released)


def checked_release_batch(release_batch: int) -> int:
    """Returns ``release_batch``, or raises InvalidArgumentError if it is below 1."""
    if release_batch < 1:
        raise InvalidArgumentError("the release batch must be at least 1 assignment a step")
    return release_batch


class CampaignEngine:
    """Steps every running campaign; the server runs it on an interval, tests directly."""

    def __init__(
        self,
        database: Database,
        *,
        clock: Clock = system_clock,
        staging_wait: timedelta = DEFAULT_WAIT,
        release_batch: int = RELEASE_BATCH,
    ) -> None:
        self._database = database
        self._release_batch = checked_release_batch(release_batch)
        self._clock = clock
        # Per campaign: (newest change seen, when a step looked back over it). Once a step
        # ran JOIN_LOOKBACK after the newest change, every change up to it had committed and
        # was seen, so later steps need not look back past it. In memory: a new leader
        # looks back in full once.
        self._seen: dict[int, tuple[datetime, datetime]] = {}
        self._analyzed: set[int] = set()
        self._staging_wait = staging_wait

    @property
    def clock(self) -> Clock:
        """The engine's clock."""
        return self._clock

    def step(self) -> list[StepOutcome]:
        """One step of each running campaign, each in its own transaction."""
        with self._database.session() as session:
            running = session.exec(
                select(Campaign.id).where(Campaign.state == CampaignState.RUNNING)
            ).all()
        outcomes = []
        for campaign_id in running:
            assert campaign_id is not None  # noqa: S101 - persisted campaigns have ids
            self._analyze_once(campaign_id)
            now = self._clock()
            seen = self._seen.get(campaign_id)
            settled = seen[0] if seen is not None and seen[1] - seen[0] >= JOIN_LOOKBACK else None
            with self._database.session() as session:
                outcome = step_campaign(
                    session,
                    campaign_id,
                    now,
                    staging_wait=self._staging_wait,
                    settled=settled,
                    release_batch=self._release_batch,
                )
                joined_until = session.exec(
                    select(Campaign.joined_until).where(Campaign.id == campaign_id)
                ).first()
            if joined_until is not None:
                newest = as_utc(joined_until)
                # Keep the first step that ran a full look-back after the newest change.
                if seen is None or seen[0] != newest or seen[1] - seen[0] < JOIN_LOOKBACK:
                    self._seen[campaign_id] = (newest, now)
            if outcome is not None:
                outcomes.append(outcome)
        return outcomes

    def _analyze_once(self, campaign_id: int) -> None:
        """PostgreSQL: fresh planner statistics before a campaign's first step here.

        A campaign's start inserts a row per vehicle (often right after a bulk import);
        until autovacuum analyzes the tables, the planner takes them for empty and runs
        the late-join anti-join as nested loops over sequential scans (0.9 s for 5,000
        vehicles instead of 15 ms). ANALYZE samples, so it costs ~0.1 s at 100,000 rows.
        """
        if campaign_id in self._analyzed:
            return
        self._analyzed.add(campaign_id)
        if self._database.engine.dialect.name != "postgresql":
            return
        with self._database.engine.connect() as connection:
            connection.exec_driver_sql("ANALYZE campaign_assignment, fleet_vehicle, fleet_ecu")
            connection.commit()
