"""Quiet check-ins: nothing written, answered from memory, and never stale past the epoch.

The offer epoch moves with every change that may give a vehicle work; the per-process
memory of quiet vehicles is trusted only at the epoch it was filled at. Two servers share
one database to show that a campaign started through one reaches vehicles checking in on
the other.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from sqlalchemy import event
from staffel.v1 import vehicle_pb2, vehicle_pb2_grpc

from keys.keyset import KeySet, init_keyset
from server.app import ServerConfig, StaffelServer
from server.campaigns.checkin import CheckInResult, answered_from_memory, check_in
from server.campaigns.engine import CampaignEngine
from server.campaigns.events import EventKind, record_events
from server.campaigns.lifecycle import CampaignActions
from server.campaigns.offers import QuietVehicles, read_epoch
from server.campaigns.plan import CampaignPlan
from server.campaigns.presence import LastSeenBuffer
from server.fleet.registry import EcuSpec, get_vehicle
from server.fleet.selectors import FleetSelector
from server.repository.director import Director
from server.store import Database
from tests.server.campaigns.support import (
    ALICE,
    BOB,
    NEW_SHA,
    OLD_SHA,
    ManualClock,
    add_vehicle,
    publish,
    start_campaign,
    vin,
)
from tests.server.campaigns.support import (
    event as vehicle_event,
)

DEADLINE_SECONDS = 60.0  # a hang guard, not a measurement


@dataclass
class Quiet:
    database: Database
    director: Director
    clock: ManualClock
    quiet: QuietVehicles
    presence: LastSeenBuffer
    bundle: str

    def check_in(self, number: int, installed: str = OLD_SHA) -> CheckInResult:
        ecus = [EcuSpec(f"gw-{number}", "gw-x1", True, installed)]
        if answered_from_memory(
            self.quiet, self.presence, vin=vin(number), ecus=ecus, nonce=os.urandom(16),
            clock=self.clock,
        ):  # fmt: skip
            return CheckInResult(next_poll_seconds=60)
        return check_in(
            self.database, self.director, vin=vin(number), ecus=ecus, nonce=os.urandom(16),
            poll_seconds=60, clock=self.clock, presence=self.presence, quiet=self.quiet,
        )  # fmt: skip

    def start_campaign(self) -> str:
        actions = CampaignActions(self.database, clock=self.clock)
        created = actions.create(
            ALICE, name="gw-2", bundle_id=self.bundle, selector=FleetSelector("sedan"),
            plan=CampaignPlan(),
        )  # fmt: skip
        actions.approve(BOB, created.campaign_id)
        return actions.start(ALICE, created.campaign_id).campaign_id


@pytest.fixture
def env(database: Database, tmp_path: Path) -> Quiet:
    init_keyset(tmp_path / "keys")
    clock = ManualClock()
    director = Director(database, KeySet.load(tmp_path / "keys"), clock=clock)
    director.initialize()
    quiet = QuietVehicles()
    quiet.watch_local_writes(database)
    quiet.refresh(database)
    return Quiet(database, director, clock, quiet, LastSeenBuffer(), publish(database))


@pytest.fixture
def writes(database: Database) -> Iterator[list[str]]:
    """Every INSERT, UPDATE or DELETE sent to the database while the test runs."""
    seen: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if statement.lstrip().split(" ", 1)[0].upper() in {"INSERT", "UPDATE", "DELETE"}:
            seen.append(statement)

    event.listen(database.engine, "before_cursor_execute", note)
    yield seen
    event.remove(database.engine, "before_cursor_execute", note)


def test_a_check_in_where_nothing_changed_writes_nothing(env: Quiet, writes: list[str]) -> None:
    add_vehicle(env.database, 1)
    env.quiet.refresh(env.database)
    writes.clear()
    assert env.check_in(1).director is None  # from the database: remembered as quiet
    assert len(env.quiet) == 1
    assert env.check_in(1).director is None  # from memory
    assert writes == []
    assert get_vehicle(env.database, vin(1)).last_seen is None
    assert env.presence.flush(env.database) == 1
    assert get_vehicle(env.database, vin(1)).last_seen is not None


def test_the_epoch_moves_when_a_vehicle_may_have_work(env: Quiet) -> None:
    database = env.database
    before = read_epoch(database)
    add_vehicle(database, 1)
    assert read_epoch(database) > before, "a new ECU moves it"
    epoch = read_epoch(database)
    env.check_in(1)
    assert read_epoch(database) == epoch, "a quiet check-in does not"
    campaign = env.start_campaign()  # and releases wave 1 in its transaction
    assert read_epoch(database) > epoch, "a campaign that starts moves it"
    epoch = read_epoch(database)
    CampaignEngine(database, clock=env.clock).step()
    assert read_epoch(database) == epoch, "a step that changes nothing does not"
    offer = env.check_in(1)
    assert offer.assignment_id
    assert read_epoch(database) == epoch, "an offer (pending to in progress) does not"
    record_events(database, vin(1), [vehicle_event(offer.assignment_id, EventKind.DOWNLOADED)])
    assert read_epoch(database) == epoch, "an event of an offered assignment does not"
    env.check_in(1, installed=NEW_SHA)
    assert read_epoch(database) > epoch, "a changed installed image moves it"
    epoch = read_epoch(database)
    CampaignActions(database, clock=env.clock).pause(ALICE, campaign)
    CampaignActions(database, clock=env.clock).resume(ALICE, campaign)
    assert read_epoch(database) > epoch, "a resumed campaign moves it"


def test_a_campaign_started_here_ends_quiet_answers_at_once(env: Quiet) -> None:
    for number in range(3):
        add_vehicle(env.database, number)
    env.quiet.refresh(env.database)
    for number in range(3):
        assert env.check_in(number).director is None
        assert env.check_in(number).director is None
    assert len(env.quiet) == 3
    env.start_campaign()
    CampaignEngine(env.database, clock=env.clock).step()
    # No epoch read in between: the local writes alone stop the quiet answers.
    assert all(env.check_in(number).assignment_id for number in range(3))


def test_a_stale_epoch_is_not_trusted() -> None:
    quiet = QuietVehicles(max_epoch_age=0.0)
    quiet.set_epoch(7)
    ecus = [EcuSpec("gw-1", "gw-x1", True, OLD_SHA)]
    quiet.remember(vin(1), ecus, 7)
    time.sleep(0.01)
    assert quiet.epoch is None
    assert not quiet.is_quiet(vin(1), ecus)


def test_a_changed_inventory_is_not_quiet() -> None:
    quiet = QuietVehicles()
    quiet.set_epoch(3)
    quiet.remember(vin(1), [EcuSpec("gw-1", "gw-x1", True, OLD_SHA)], 3)
    assert quiet.is_quiet(vin(1), [EcuSpec("gw-1", "gw-x1", True, OLD_SHA)])
    assert not quiet.is_quiet(vin(1), [EcuSpec("gw-1", "gw-x1", True, NEW_SHA)])
    assert not quiet.is_quiet(vin(1), [EcuSpec("gw-1", "gw-x2", True, OLD_SHA)])
    quiet.set_epoch(4)
    assert not quiet.is_quiet(vin(1), [EcuSpec("gw-1", "gw-x1", True, OLD_SHA)])


@pytest.fixture
async def replicas(tmp_path: Path, database_url: str) -> AsyncIterator[list[StaffelServer]]:
    """Two server processes' worth of state (stores, caches, listeners) on one database."""
    init_keyset(tmp_path / "keys")
    servers = [
        StaffelServer(
            ServerConfig(
                data_dir=tmp_path / f"data-{name}",
                keys_dir=tmp_path / "keys",
                database_url=database_url,
                grpc_listen="127.0.0.1:0",
                http_listen="127.0.0.1:0",
                engine_interval_seconds=0,
                offer_epoch_seconds=0.2,
            )
        )
        for name in ("a", "b")
    ]
    for server in servers:
        await server.start()
    yield servers
    for server in servers:
        await server.stop()


async def test_a_campaign_started_on_one_replica_reaches_vehicles_on_the_other(
    replicas: list[StaffelServer],
) -> None:
    a, b = replicas
    numbers = range(5)
    for number in numbers:
        add_vehicle(a.database, number)
    bundle = publish(a.database)

    async with grpc.aio.insecure_channel(b.grpc_address) as channel:
        stub = vehicle_pb2_grpc.VehicleServiceStub(channel)

        async def outcome(number: int) -> str:
            answer = await stub.CheckIn(
                vehicle_pb2.CheckInRequest(
                    vin=vin(number),
                    nonce=os.urandom(16),
                    ecus=[vehicle_pb2.EcuVersion(
                        serial=f"gw-{number}", hardware_id="gw-x1", primary=True,
                        installed_sha256=OLD_SHA,
                    )],
                )
            )  # fmt: skip
            return answer.WhichOneof("outcome") or ""

        deadline = time.monotonic() + DEADLINE_SECONDS
        while len(b.quiet) < len(numbers):  # until b has read the epoch after the imports
            assert time.monotonic() < deadline, "replica b never remembered its quiet vehicles"
            assert {await outcome(n) for n in numbers} == {"nothing_to_do"}
            await asyncio.sleep(0.05)
        assert {await outcome(n) for n in numbers} == {"nothing_to_do"}

        start_campaign(a.database, bundle)
        await asyncio.to_thread(a.engine.step)

        offered: set[int] = set()
        while offered != set(numbers):
            assert time.monotonic() < deadline, f"replica b offered only {sorted(offered)}"
            offered |= {n for n in numbers if await outcome(n) == "update"}
            await asyncio.sleep(0.05)
