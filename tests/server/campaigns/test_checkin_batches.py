"""Concurrent check-ins on PostgreSQL share their statements: one read for the vehicles
that checked in together and one take for their pre-signed first offers. Each gets the
answer it would have had alone: an unknown vehicle fails alone, a vehicle twice in one
batch is taken once, and a campaign paused between the read and the take takes nothing."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import text

from keys.keyset import KeySet, init_keyset
from server.campaigns import offer_targets as offer_targets_module
from server.campaigns.checkin import CheckInResult, check_in
from server.campaigns.checkin_batches import CheckInBatches
from server.campaigns.lifecycle import CampaignActions
from server.campaigns.offers import EPOCH_UNCHANGED, QuietVehicles
from server.campaigns.presence import LastSeenBuffer
from server.campaigns.presign import presign
from server.clock import as_utc, system_clock
from server.errors import NotFoundError
from server.fleet.registry import EcuSpec
from server.repository.director import Director
from server.store import Database
from tests.server.campaigns.support import (
    ALICE,
    OLD_SHA,
    add_vehicle,
    assignment_state,
    publish,
    start_campaign,
    vin,
)

VEHICLES = (1, 2, 3, 4, 5, 6)
# The check-in transaction's lock on the open assignment (the takes without a transaction
# only skip rows locked elsewhere: FOR UPDATE SKIP LOCKED).
TRANSACTION_LOCK = "FOR UPDATE OF campaign_assignment"


@dataclass
class Fleet:
    database: Database
    director: Director
    quiet: QuietVehicles
    campaign: str
    batches: CheckInBatches
    statements: list[str] = field(default_factory=list)

    async def check_in(self, number: int) -> CheckInResult:
        """One check-in, on the event loop as the server runs it."""
        return await self.database.run_on_loop(
            partial(
                check_in, self.database, self.director, vin=vin(number), nonce=os.urandom(16),
                ecus=[EcuSpec(f"gw-{number}", "gw-x1", True, OLD_SHA)], poll_seconds=60,
                presence=LastSeenBuffer(), quiet=self.quiet, batches=self.batches,
            )
        )  # fmt: skip

    async def together(self, *numbers: int) -> list[CheckInResult | BaseException]:
        return await asyncio.gather(*(self.check_in(n) for n in numbers), return_exceptions=True)

    def reads(self) -> list[str]:
        return [s for s in self.statements if "LATERAL" in s]

    def writes(self) -> list[str]:
        return [s for s in self.statements if s.lstrip().upper().startswith("UPDATE")]

    def offered_at(self, number: int) -> datetime:
        with self.database.engine.connect() as connection:
            offered: datetime = connection.execute(
                text("SELECT offered_at FROM campaign_assignment WHERE vin = :vin"),
                {"vin": vin(number)},
            ).scalar_one()
        return as_utc(offered)

    def state(self, number: int) -> tuple[str, str]:
        return assignment_state(self.database, number)


@pytest.fixture
async def fleet(postgres_url: str, tmp_path: Path) -> AsyncIterator[Fleet]:
    """Vehicles 1 to 6 in a started campaign whose Director metadata is signed ahead."""
    database = Database.from_url(postgres_url)
    init_keyset(tmp_path / "keys")
    director = Director(database, KeySet.load(tmp_path / "keys"))
    director.initialize()
    for number in VEHICLES:
        add_vehicle(database, number)
    campaign = start_campaign(database, publish(database))
    assert presign(database, director).counts.signed == len(VEHICLES)
    quiet = QuietVehicles()
    quiet.watch_local_writes(database)
    quiet.refresh(database)
    # A long window, so that every check-in of a test's gather joins one batch.
    batches = CheckInBatches(database, gather_seconds=0.05)
    fleet = Fleet(database, director, quiet, campaign, batches)
    database.listen("before_cursor_execute", lambda *args: fleet.statements.append(args[2]))
    yield fleet
    await database.close_loop_engine()
    database.dispose()


async def test_first_offers_together_take_one_read_and_one_take(fleet: Fleet) -> None:
    before = system_clock()  # the server's clock, to the second
    firsts = await fleet.together(*VEHICLES)
    after = system_clock()
    assert all(isinstance(a, CheckInResult) and a.director is not None for a in firsts)
    assert len(fleet.reads()) == 1, "one read for all six vehicles"
    assert "ANY" in fleet.reads()[0]
    assert len(fleet.writes()) == 1, "one take for all six assignments"
    assert "unnest" in fleet.writes()[0]
    assert EPOCH_UNCHANGED in fleet.writes()[0], "the epoch watcher reads nothing after it"
    assert not any(TRANSACTION_LOCK in s for s in fleet.statements), "no transaction"
    for number in VEHICLES:
        assert fleet.state(number) == ("in_progress", json.dumps({f"gw-{number}": OLD_SHA}))
        # Each check-in's own moment, stored as the single take stores it.
        assert before <= fleet.offered_at(number) <= after
    assert fleet.batches.statements == (1, 1)

    fleet.statements.clear()
    repeats = await fleet.together(*VEHICLES)
    assert len(fleet.reads()) == 1
    assert fleet.writes() == [], "a repeat offer writes nothing"
    for first, repeat in zip(firsts, repeats, strict=True):
        assert isinstance(first, CheckInResult) and isinstance(repeat, CheckInResult)
        assert repeat.director == first.director
        assert repeat.assignment_id == first.assignment_id


async def test_a_lone_check_in_reads_its_vehicle_alone(fleet: Fleet) -> None:
    answer = await fleet.check_in(1)
    assert answer.director is not None
    assert len(fleet.reads()) == 1
    assert "ANY" not in fleet.reads()[0], "the single vehicle's statement, planned once"
    assert len(fleet.writes()) == 1
    assert "unnest" not in fleet.writes()[0]
    assert fleet.state(1)[0] == "in_progress"
    assert datetime.now(UTC) - fleet.offered_at(1) < timedelta(minutes=1)


async def test_an_unknown_vehicle_fails_alone(fleet: Fleet) -> None:
    first, unknown, second = await fleet.together(1, 99, 2)
    assert isinstance(unknown, NotFoundError)
    assert "is not registered" in str(unknown)
    assert isinstance(first, CheckInResult) and first.director is not None
    assert isinstance(second, CheckInResult) and second.director is not None
    assert len(fleet.reads()) == 1


async def test_a_vehicle_twice_in_one_batch_is_taken_once(fleet: Fleet) -> None:
    once, twice = await fleet.together(3, 3)
    assert isinstance(once, CheckInResult) and isinstance(twice, CheckInResult)
    assert once.director is not None
    assert twice.director == once.director, "the second is the repeat of the first"
    assert once.assignment_id == twice.assignment_id
    assert fleet.state(3) == ("in_progress", json.dumps({"gw-3": OLD_SHA}))
    # The take was the first's; the second found it taken and asked the transaction.
    assert len([s for s in fleet.writes() if EPOCH_UNCHANGED in s]) == 1
    assert any(TRANSACTION_LOCK in s for s in fleet.statements)


async def test_a_campaign_paused_before_the_take_takes_nothing(fleet: Fleet) -> None:
    database = fleet.database
    paused: list[str] = []

    def pause_first(_conn: object, _cursor: object, sql: str, *_: object) -> None:
        if "unnest" in sql and sql.lstrip().upper().startswith("UPDATE") and not paused:
            # Another server pauses the campaign after these check-ins' read.
            paused.append(CampaignActions(database).pause(ALICE, fleet.campaign).state)

    database.listen("before_cursor_execute", pause_first)
    try:
        answers = await fleet.together(4, 5, 6)
    finally:
        database.remove_listener("before_cursor_execute", pause_first)
    assert paused == ["paused"]
    assert all(isinstance(a, CheckInResult) and a.director is None for a in answers)
    for number in (4, 5, 6):
        assert fleet.state(number)[0] == "pending"


async def test_no_check_in_holds_a_connection_while_its_take_waits(fleet: Fleet) -> None:
    # Cold bundle cache: each check-in takes a connection to read the bundle's images.
    # Holding it while the take waits for its batch (which needs a connection of its own)
    # would let a burst of first offers take the whole pool and wait for each other.
    offer_targets_module._BUNDLES.clear()
    database = fleet.database
    in_use: list[int] = []

    def count(_conn: object, _cursor: object, sql: str, *_: object) -> None:
        if "unnest" in sql and sql.lstrip().upper().startswith("UPDATE"):
            in_use.append(database.engine.pool.checkedout())  # type: ignore[attr-defined]

    database.listen("before_cursor_execute", count)
    try:
        answers = await fleet.together(*VEHICLES)
    finally:
        database.remove_listener("before_cursor_execute", count)
    assert all(isinstance(a, CheckInResult) and a.director is not None for a in answers)
    assert any("release_bundle_image" in s for s in fleet.statements), "the images were read"
    assert in_use == [1], "only the batch's own connection"


async def test_a_take_never_waits_for_a_row_lock_held_elsewhere(fleet: Fleet) -> None:
    """Another transaction holds vehicle 1's assignment: the batch takes 2 and 3 without
    waiting; vehicle 1's check-in runs the transaction, which waits for the lock alone."""
    holder = fleet.database.engine.connect()
    transaction = holder.begin()
    holder.execute(
        text("SELECT id FROM campaign_assignment WHERE vin = :vin FOR UPDATE"), {"vin": vin(1)}
    )
    try:
        locked = asyncio.ensure_future(fleet.check_in(1))
        free = [asyncio.ensure_future(fleet.check_in(n)) for n in (2, 3)]
        # A guard against a hang, not a measure: these need nothing vehicle 1's lock holds.
        done, _ = await asyncio.wait(free, timeout=30)
        assert done == set(free), "the batch's take waited for another vehicle's lock"
        assert all(task.result().director is not None for task in free)
        assert not locked.done(), "vehicle 1 waits for its own lock, in the transaction"
    finally:
        transaction.commit()
        holder.close()
    first = await locked
    assert first.director is not None, "taken once the lock was released"
    for number in (1, 2, 3):
        assert fleet.state(number)[0] == "in_progress"
    assert len([s for s in fleet.writes() if "unnest" in s]) == 1
    assert any(TRANSACTION_LOCK in s for s in fleet.statements), "vehicle 1's transaction"
