"""The engine's late-join look-back stops at what an earlier step already settled."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlmodel import select

from server.campaigns.engine import JOIN_LOOKBACK, CampaignEngine
from server.campaigns.lifecycle import CampaignActions
from server.campaigns.models import Assignment
from server.campaigns.plan import CampaignPlan
from server.clock import system_clock
from server.fleet.selectors import FleetSelector
from server.store import Database
from tests.server.campaigns.support import ALICE, BOB, add_vehicle, publish


def test_late_joiners_still_join_after_the_look_back_settled(database: Database) -> None:
    offset = timedelta(0)

    def clock() -> datetime:
        return system_clock() + offset

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
    offset = JOIN_LOOKBACK + timedelta(seconds=1)
    engine.step()  # a full look-back after every change had committed: settled
    engine.step()  # looks back only to the newest change
    late = add_vehicle(database, 7)
    engine.step()
    with database.session() as session:
        vins = set(session.exec(select(Assignment.vin)).all())
    assert late in vins
    assert len(vins) == 4
