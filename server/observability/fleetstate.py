"""Gauges of campaigns, assignments and waves, read from the store at scrape time.

Counting on each scrape (a few ``GROUP BY`` statements on indexed columns) keeps the numbers
right across several server replicas, which a counter kept in one process cannot. The
answer is cached for a few seconds, so several scrapers cost no more than one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import col, func, select

from server.campaigns.models import (
    ACTIVE_CAMPAIGN_STATES,
    Assignment,
    AssignmentState,
    Campaign,
    CampaignState,
)
from server.campaigns.plan import CampaignPlan
from server.store import Database

log = logging.getLogger(__name__)

CACHE_SECONDS = 5.0  # how long one reading of the store answers scrapes


@dataclass(frozen=True)
class FleetState:
    """One reading of the store: counts by state, and each active campaign's waves."""

    campaigns: dict[str, int] = field(default_factory=dict)
    assignments: dict[str, int] = field(default_factory=dict)
    # campaign id (``c7``) -> (current wave, planned waves)
    waves: dict[str, tuple[int, int]] = field(default_factory=dict)
    # (campaign id, wave, assignment state) -> count, for active campaigns only
    wave_assignments: dict[tuple[str, int, str], int] = field(default_factory=dict)


def read_fleet_state(database: Database) -> FleetState:
    """Counts campaigns and assignments by state, and the waves of active campaigns."""
    state = FleetState()
    with database.session() as session:
        for campaign_state, number in session.exec(
            select(Campaign.state, func.count()).group_by(col(Campaign.state))
        ).all():
            state.campaigns[str(campaign_state)] = number
        for assignment_state, number in session.exec(
            select(Assignment.state, func.count()).group_by(col(Assignment.state))
        ).all():
            state.assignments[str(assignment_state)] = number
        active = session.exec(
            select(Campaign.id, Campaign.current_wave, Campaign.plan).where(
                col(Campaign.state).in_([s.value for s in ACTIVE_CAMPAIGN_STATES])
            )
        ).all()
        for campaign_id, current_wave, plan in active:
            state.waves[f"c{campaign_id}"] = (current_wave, len(CampaignPlan.from_json(plan).waves))
        if active:
            rows = session.exec(
                select(Assignment.campaign_id, Assignment.wave, Assignment.state, func.count())
                .where(col(Assignment.campaign_id).in_([row[0] for row in active]))
                .group_by(col(Assignment.campaign_id), col(Assignment.wave), col(Assignment.state))
            ).all()
            for campaign_id, wave, assignment_state, number in rows:
                state.wave_assignments[f"c{campaign_id}", wave, str(assignment_state)] = number
    return state


class FleetStateCollector(Collector):
    """A Prometheus collector that renders a cached ``FleetState`` at each scrape."""

    def __init__(
        self,
        database: Database,
        *,
        cache_seconds: float = CACHE_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._database = database
        self._cache_seconds = cache_seconds
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._state = FleetState()
        self._read_at: float | None = None
        self._up = 0

    def _current(self) -> tuple[FleetState, int]:
        with self._lock:
            now = self._monotonic()
            if self._read_at is None or now - self._read_at >= self._cache_seconds:
                try:
                    self._state, self._up = read_fleet_state(self._database), 1
                except SQLAlchemyError as error:
                    # The last reading stays; staffel_fleet_state_up tells it is stale.
                    log.warning("cannot read fleet state for /metrics: %s", error)
                    self._up = 0
                self._read_at = now
            return self._state, self._up

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The families without reading the store (registration must not query)."""
        return iter(_families())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The families filled from the (cached) reading of the store."""
        state, up = self._current()
        up_family, campaigns, assignments, current, planned, per_wave = _families()
        up_family.add_metric([], up)
        for campaign_state in CampaignState:
            campaigns.add_metric(
                [campaign_state.value], state.campaigns.get(campaign_state.value, 0)
            )
        for assignment_state in AssignmentState:
            assignments.add_metric(
                [assignment_state.value], state.assignments.get(assignment_state.value, 0)
            )
        for campaign_id, (wave, waves) in sorted(state.waves.items()):
            current.add_metric([campaign_id], wave)
            planned.add_metric([campaign_id], waves)
        for (campaign_id, wave, in_state), number in sorted(state.wave_assignments.items()):
            per_wave.add_metric([campaign_id, str(wave), in_state], number)
        yield from (up_family, campaigns, assignments, current, planned, per_wave)


def _families() -> tuple[GaugeMetricFamily, ...]:
    return (
        GaugeMetricFamily(
            "staffel_fleet_state_up",
            "1 when the last reading of campaign and assignment state succeeded, else 0.",
        ),
        GaugeMetricFamily("staffel_campaigns", "Campaigns, by state.", labels=["state"]),
        GaugeMetricFamily(
            "staffel_assignments",
            "Assignments (one vehicle in one campaign) of every campaign, by state.",
            labels=["state"],
        ),
        GaugeMetricFamily(
            "staffel_campaign_current_wave",
            "The open wave of each running or paused campaign (1 = the first).",
            labels=["campaign"],
        ),
        GaugeMetricFamily(
            "staffel_campaign_waves",
            "The waves planned for each running or paused campaign.",
            labels=["campaign"],
        ),
        GaugeMetricFamily(
            "staffel_wave_assignments",
            "Assignments of each running or paused campaign, by wave and state.",
            labels=["campaign", "wave", "state"],
        ),
    )
