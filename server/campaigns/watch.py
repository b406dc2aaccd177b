"""Live progress of a campaign: a new snapshot each time its counts or state change."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from server.campaigns.models import CampaignState
from server.campaigns.views import CampaignView, get_campaign
from server.clock import Clock, system_clock
from server.store import Database

FINISHED = frozenset({CampaignState.COMPLETED, CampaignState.ABORTED})


def _fingerprint(view: CampaignView) -> tuple[object, ...]:
    return (
        view.state,
        view.current_wave,
        view.pause_reason,
        tuple((w.counts, w.gate) for w in view.waves),
    )


async def watch_campaign(
    database: Database,
    public_id: str,
    *,
    interval_seconds: float = 0.5,
    clock: Clock = system_clock,
) -> AsyncIterator[CampaignView]:
    """Yields the campaign (without vehicles) now and after every change, until it ends."""
    last: tuple[object, ...] | None = None
    while True:
        view = await asyncio.to_thread(
            get_campaign, database, public_id, assignment_limit=0, clock=clock
        )
        fingerprint = _fingerprint(view)
        if fingerprint != last:
            last = fingerprint
            yield view
        if view.state in FINISHED:
            return
        await asyncio.sleep(interval_seconds)
