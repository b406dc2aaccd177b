"""On PostgreSQL most check-ins are answered without a transaction: nothing to do and repeat
offers from one read of the vehicle with its open assignment, a first offer whose Director
metadata was signed ahead with one conditional statement more. Whatever else a check-in
must do goes through the transaction, and an assignment changed between the read and the
take is never taken. SQLite answers every check-in in its transaction, as before."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import event, text

from keys.keyset import KeySet, init_keyset
from server.campaigns.checkin import CheckInResult, check_in
from server.campaigns.lifecycle import CampaignActions
from server.campaigns.offers import EPOCH_UNCHANGED, QuietVehicles
from server.campaigns.presence import LastSeenBuffer
from server.campaigns.presign import presign
from server.fleet.registry import EcuSpec
from server.repository.director import Director
from server.store import Database
from tests.server.campaigns.support import (
    ALICE,
    NEW_SHA,
    OLD_SHA,
    add_vehicle,
    assignment_state,
    publish,
    start_campaign,
    vin,
)


@dataclass
class Fleet:
    database: Database
    director: Director
    quiet: QuietVehicles
    campaign: str

    def check_in(self, number: int, installed: str = OLD_SHA) -> CheckInResult:
        return check_in(
            self.database, self.director, vin=vin(number), nonce=os.urandom(16),
            ecus=[EcuSpec(f"gw-{number}", "gw-x1", True, installed)], poll_seconds=60,
            presence=LastSeenBuffer(), quiet=self.quiet,
        )  # fmt: skip

    def state(self, number: int) -> tuple[str, str]:
        return assignment_state(self.database, number)


@pytest.fixture
def fleet(database: Database, tmp_path: Path) -> Fleet:
    """Vehicles 1 to 3 in a started campaign (released, metadata not yet signed)."""
    init_keyset(tmp_path / "keys")
    director = Director(database, KeySet.load(tmp_path / "keys"))
    director.initialize()
    for number in (1, 2, 3):
        add_vehicle(database, number)
    campaign = start_campaign(database, publish(database))
    quiet = QuietVehicles()
    quiet.watch_local_writes(database)
    quiet.refresh(database)
    return Fleet(database, director, quiet, campaign)


@pytest.fixture
def trail(database: Database) -> Iterator[list[str]]:
    """Statements and transaction ends ("COMMIT"), in order, while the test runs."""
    seen: list[str] = []

    def statement(_conn: object, _cursor: object, sql: str, *_: object) -> None:
        seen.append(sql)

    def commit(_conn: object) -> None:
        seen.append("COMMIT")

    event.listen(database.engine, "before_cursor_execute", statement)
    event.listen(database.engine, "commit", commit)
    yield seen
    event.remove(database.engine, "before_cursor_execute", statement)
    event.remove(database.engine, "commit", commit)


def _on_postgresql(database: Database) -> bool:
    return database.engine.dialect.name == "postgresql"


def test_a_presigned_first_offer_and_its_repeats_need_no_transaction_on_postgresql(
    fleet: Fleet, trail: list[str]
) -> None:
    assert presign(fleet.database, fleet.director).counts.signed == 3
    trail.clear()
    first = fleet.check_in(1)
    offered = list(trail)
    assert first.director is not None
    assert fleet.state(1) == ("in_progress", json.dumps({"gw-1": OLD_SHA}))
    taken = [sql for sql in offered if sql.lstrip().upper().startswith("UPDATE")]
    assert len(taken) == 1
    assert EPOCH_UNCHANGED in taken[0]
    assert not any("campaign_offer_epoch" in sql for sql in offered), "no epoch read after it"
    if _on_postgresql(fleet.database):
        assert "COMMIT" not in offered
        assert not any("FOR UPDATE" in sql for sql in offered)
        assert len(offered) == 2, "one read of the vehicle and its assignment, then the take"
        assert "LATERAL" in offered[0]
    else:
        assert offered.count("COMMIT") == 1
    trail.clear()
    repeat = fleet.check_in(1)
    assert repeat.director == first.director
    assert repeat.assignment_id == first.assignment_id
    if _on_postgresql(fleet.database):
        assert len(trail) == 1, "a repeat offer is one read"
        assert "COMMIT" not in trail
    assert not any(sql.lstrip().upper().startswith("UPDATE") for sql in trail)


def test_a_first_offer_without_signed_metadata_goes_through_the_transaction(
    fleet: Fleet, trail: list[str]
) -> None:
    answer = fleet.check_in(2)
    assert answer.director is not None, "signed at the check-in"
    assert trail.count("COMMIT") == 1
    assert any("FOR UPDATE" in sql for sql in trail) is _on_postgresql(fleet.database)
    assert fleet.state(2)[0] == "in_progress"
    trail.clear()
    assert fleet.check_in(2).director == answer.director
    assert ("COMMIT" in trail) is not _on_postgresql(fleet.database)


def test_an_assignment_paused_between_the_reads_and_the_take_is_not_taken(
    fleet: Fleet, database: Database
) -> None:
    presign(fleet.database, fleet.director)
    paused: list[str] = []

    def pause_first(_conn: object, _cursor: object, sql: str, *_: object) -> None:
        if EPOCH_UNCHANGED in sql and "SELECT campaign.state" in sql and not paused:
            # Another server pauses the campaign after this check-in's reads.
            paused.append(CampaignActions(database).pause(ALICE, fleet.campaign).state)

    event.listen(database.engine, "before_cursor_execute", pause_first)
    try:
        answer = fleet.check_in(3)
    finally:
        event.remove(database.engine, "before_cursor_execute", pause_first)
    if not _on_postgresql(database):
        # SQLite reads and takes in one transaction: there is no moment between them.
        assert paused == []
        assert answer.director is not None
        return
    assert paused == ["paused"]
    assert answer.director is None, "a paused campaign offers no pending assignment"
    assert fleet.state(3)[0] == "pending", "the take found the campaign paused"


def test_nothing_to_do_and_a_changed_inventory_are_answered_as_before(
    fleet: Fleet, database: Database, trail: list[str]
) -> None:
    add_vehicle(database, 9)  # in no campaign
    fleet.quiet.refresh(database)
    trail.clear()
    assert fleet.check_in(9).director is None
    assert ("COMMIT" in trail) is not _on_postgresql(database)
    assert fleet.quiet.is_quiet(vin(9), [EcuSpec("gw-9", "gw-x1", True, OLD_SHA)])
    trail.clear()
    # A new image installed: the inventory is written, in the transaction.
    assert fleet.check_in(9, installed=NEW_SHA).director is None
    assert trail.count("COMMIT") == 1
    with database.engine.connect() as connection:
        installed = connection.execute(
            text("SELECT installed_sha256 FROM fleet_ecu WHERE serial = 'gw-9'")
        ).scalar_one()
    assert installed == NEW_SHA
