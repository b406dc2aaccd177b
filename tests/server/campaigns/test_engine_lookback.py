"""The engine's late-join look-back stops at what an earlier step already settled."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event
from sqlmodel import select

from server.campaigns.engine import JOIN_LOOKBACK, CampaignEngine
from server.campaigns.lifecycle import CampaignActions
from server.campaigns.models import Assignment
from server.campaigns.plan import CampaignPlan
from server.clock import system_clock
from server.fleet import registry
from server.fleet.selectors import FleetSelector
from server.store import Database
from tests.server.campaigns.support import ALICE, BOB, add_vehicle, publish


class MovingClock:
    """The wall clock, moved forward by ``offset``."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return system_clock() + self.offset


def settled_engine(database: Database, clock: MovingClock) -> CampaignEngine:
    """Three vehicles in a running campaign, and an engine whose look-back has settled at
    their registration (it stepped once more than JOIN_LOOKBACK later)."""
    for number in range(3):
        add_vehicle(database, number)
    bundle = publish(database)
    actions = CampaignActions(database, clock=clock)
    created = actions.create(
        ALICE, name="gw-2", bundle_id=bundle, selector=FleetSelector("sedan"), plan=CampaignPlan()
    )
    actions.approve(BOB, created.campaign_id)
    actions.start(ALICE, created.campaign_id)
    engine = CampaignEngine(database, clock=clock)
    engine.step()
    clock.offset += JOIN_LOOKBACK + timedelta(seconds=1)
    engine.step()  # a full look-back after every change had committed: settled
    return engine


def test_late_joiners_still_join_after_the_look_back_settled(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = MovingClock()
    # Registrations see the same moved clock as the engine: a vehicle added after the
    # look-back settled changed after the settled moment, as it would in the field.
    monkeypatch.setattr(registry, "system_clock", clock)
    engine = settled_engine(database, clock)
    engine.step()  # looks back only to the newest change
    late = add_vehicle(database, 7)
    engine.step()
    with database.session() as session:
        vins = set(session.exec(select(Assignment.vin)).all())
    assert late in vins
    assert len(vins) == 4


def test_a_settled_step_reads_no_vehicle_again(database: Database) -> None:
    engine = settled_engine(database, MovingClock())
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(database.engine, "before_cursor_execute", seen)
    try:
        engine.step()
    finally:
        event.remove(database.engine, "before_cursor_execute", seen)
    # The vehicles changed at the settled moment (an import's rows share one) are not
    # joined against the campaign again, and nothing queued means no pacing reads.
    assert statements, "the step ran no statement at all"
    assert not [s for s in statements if "INSERT INTO campaign_assignment" in s]
    assert not [s for s in statements if "released_at >" in s]
