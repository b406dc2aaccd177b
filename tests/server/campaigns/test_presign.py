"""Pre-signing: released assignments find their Director metadata stored at check-in."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import delete
from sqlmodel import select
from tuf.api.metadata import Metadata, Root, Targets

from keys.ceremony import next_root, sign_file, signer_from_key_file, to_bytes
from keys.keyset import KeySet, init_keyset
from server.campaigns.checkin import CheckInResult, check_in
from server.campaigns.lifecycle import CampaignActions
from server.campaigns.models import Assignment, AssignmentState
from server.campaigns.plan import CampaignPlan, WaveSpec
from server.campaigns.presign import Presigner, PresignLoop, presign
from server.fleet.models import Ecu
from server.fleet.registry import EcuSpec
from server.fleet.selectors import FleetSelector
from server.metrics import ServerMetrics
from server.observability.signing import observe_signing
from server.repository.director import Director
from server.repository.models import DirectorVehicleState
from server.store import Database
from tests.server.campaigns.support import (
    ALICE,
    BOB,
    NEW_SHA,
    OLD_SHA,
    ManualClock,
    add_vehicle,
    publish,
    vin,
)
from tests.server.repository.test_director import verify


@dataclass
class Env:
    database: Database
    director: Director
    clock: ManualClock
    bundle: str
    keys_dir: Path

    def check_in(
        self, number: int, installed: str = OLD_SHA, extra: tuple[EcuSpec, ...] = ()
    ) -> CheckInResult:
        ecus = [EcuSpec(f"gw-{number}", "gw-x1", True, installed), *extra]
        return check_in(
            self.database, self.director, vin=vin(number), ecus=ecus, nonce=os.urandom(16),
            poll_seconds=60, clock=self.clock,
        )  # fmt: skip

    def start_campaign(
        self, selector: FleetSelector | None = None, plan: CampaignPlan | None = None
    ) -> str:
        actions = CampaignActions(self.database, clock=self.clock)
        created = actions.create(
            ALICE, name="gw-2", bundle_id=self.bundle,
            selector=selector or FleetSelector("sedan"), plan=plan or CampaignPlan(),
        )  # fmt: skip
        actions.approve(BOB, created.campaign_id)
        return actions.start(ALICE, created.campaign_id).campaign_id

    def stored_version(self, number: int) -> int | None:
        with self.database.session() as session:
            state = session.get(DirectorVehicleState, vin(number))
            return None if state is None else state.version

    def import_next_root(self) -> int:
        """A Director root version 2 under the same keys, signed as in the ceremony."""
        keys = KeySet.load(self.keys_dir)
        current = Metadata[Root].from_bytes(self.director.root()).signed
        path = self.keys_dir.parent / "2.root.json"
        path.write_bytes(to_bytes(Metadata(next_root(current, keys, "director"))))
        [root_key] = keys.roles()["director.root"].keys
        sign_file(path, signer_from_key_file(self.keys_dir / root_key.file, None))
        return self.director.import_root(path.read_bytes())


@pytest.fixture
def env(database: Database, tmp_path: Path) -> Env:
    init_keyset(tmp_path / "keys")
    clock = ManualClock(datetime.now(UTC))  # vehicles check expiry against real time
    director = Director(database, KeySet.load(tmp_path / "keys"), clock=clock)
    director.initialize()
    return Env(database, director, clock, publish(database), tmp_path / "keys")


@pytest.fixture
def signatures() -> Iterator[list[str]]:
    """The role of every Director metadata file signed while the test runs."""
    seen: list[str] = []
    stop = observe_signing(lambda repo, role, _s: seen.append(role) if repo == "director" else None)
    yield seen
    stop()


def targets_of(result: CheckInResult) -> Targets:
    assert result.director is not None
    targets = Metadata[Targets].from_bytes(result.director.targets).signed
    assert isinstance(targets, Targets)
    return targets


def test_a_first_offer_after_pre_signing_signs_nothing(
    env: Env, signatures: list[str], tmp_path: Path
) -> None:
    for number in range(3):
        add_vehicle(env.database, number)
    env.start_campaign()
    done = presign(env.database, env.director)
    assert (done.candidates, done.counts.signed) == (3, 3), done
    assert len(signatures) == 9
    signatures.clear()

    offers = [env.check_in(number) for number in range(3)]

    assert signatures == []
    assert all(offer.assignment_id and offer.director is not None for offer in offers)
    for number, offer in enumerate(offers):
        assert offer.director is not None
        assert offer.director.version == env.stored_version(number) == 1
        # A vehicle trusting the Director root accepts it (signatures, versions, expiry).
        updater = verify(env.director, offer.director, tmp_path / f"vehicle-{number}")
        info = updater.get_targetinfo("gw-2.0")
        assert info is not None and info.hashes == {"sha256": NEW_SHA}
        assert info.custom == {"ecus": {f"gw-{number}": {"hardware_id": "gw-x1"}}}
    with env.database.session() as session:
        states = session.exec(select(Assignment.state)).all()
    assert set(states) == {AssignmentState.IN_PROGRESS}, "the offer still takes the assignment"
    again = presign(env.database, env.director)
    assert (again.candidates, again.counts.signed) == (0, 0)
    assert signatures == []


def test_a_presigner_signs_only_what_changed_since_its_last_round(
    env: Env, signatures: list[str]
) -> None:
    for number in range(2):
        add_vehicle(env.database, number)
    env.start_campaign()
    presigner = Presigner(env.database, env.director)
    assert presigner.run_round().counts.signed == 2
    assert presigner.run_round().candidates == 0, "nothing changed: nothing to look at"
    assert presigner.run_round(force=False).candidates == 0
    signatures.clear()
    # Close to expiry (within the renew margin), the metadata is signed again in advance.
    env.clock.advance(hours=20)
    renewed = presigner.run_round()
    assert (renewed.candidates, renewed.counts.signed) == (2, 2)
    assert env.stored_version(0) == 2
    signatures.clear()
    assert env.check_in(0).director is not None
    assert signatures == []


def test_a_changed_inventory_gets_metadata_signed_at_check_in(
    env: Env, signatures: list[str]
) -> None:
    add_vehicle(env.database, 1)
    add_vehicle(env.database, 2)
    env.start_campaign()
    assert presign(env.database, env.director).counts.signed == 2
    signatures.clear()

    # An installed image is not part of the Director's targets: the metadata still holds.
    same = env.check_in(1, installed=NEW_SHA)
    assert signatures == []
    assert same.director is not None and same.director.version == 1

    # A second gateway registered after pre-signing: the targets name two ECUs now.
    with env.database.session() as session:
        session.add(
            Ecu(serial="gw-2b", vin=vin(2), hardware_id="gw-x1", primary=False,
                installed_sha256=OLD_SHA)
        )  # fmt: skip
    fresh = env.check_in(2, extra=(EcuSpec("gw-2b", "gw-x1", False, OLD_SHA),))
    assert len(signatures) == 3
    assert fresh.director is not None and fresh.director.version == 2
    assert set(targets_of(fresh).targets["gw-2.0"].unrecognized_fields["custom"]["ecus"]) == {
        "gw-2",
        "gw-2b",
    }


def test_a_new_director_root_makes_the_next_offer_sign_again(
    env: Env, signatures: list[str], tmp_path: Path
) -> None:
    add_vehicle(env.database, 1)
    env.start_campaign()
    first = env.check_in(1)
    assert first.director is not None and first.director.version == 1
    assert env.check_in(1).director == first.director, "a repeat offer reuses it"
    signatures.clear()

    assert env.import_next_root() == 2
    again = env.check_in(1)

    assert len(signatures) == 3
    assert again.director is not None and again.director.version == 2
    # The vehicle that trusted root 1 updates to root 2 and accepts the new metadata.
    metadata_dir = tmp_path / "vehicle"
    verify(env.director, first.director, metadata_dir)
    verify(env.director, again.director, metadata_dir)
    assert Metadata[Root].from_bytes((metadata_dir / "root.json").read_bytes()).signed.version == 2


def test_pre_signing_follows_a_new_director_root(env: Env, signatures: list[str]) -> None:
    add_vehicle(env.database, 1)
    env.start_campaign()
    presigner = Presigner(env.database, env.director)
    assert presigner.run_round(force=False).counts.signed == 1
    env.import_next_root()
    assert presigner.run_round(force=False).counts.signed == 1, "the root moved: scanned"
    signatures.clear()
    offer = env.check_in(1)
    assert signatures == []
    assert offer.director is not None and offer.director.version == 2


def test_pre_signing_skips_paused_aborted_and_unreleased_or_taken_assignments(
    env: Env, signatures: list[str]
) -> None:
    for number, site in enumerate(("a", "a", "a", "p", "x")):
        add_vehicle(env.database, number, site=f"site-{site}")
    two_waves = CampaignPlan(waves=(WaveSpec(count=2), WaveSpec(percent=100.0)))
    env.start_campaign(FleetSelector("sedan", sites=("site-a",)), two_waves)
    paused = env.start_campaign(FleetSelector("sedan", sites=("site-p",)))
    aborted = env.start_campaign(FleetSelector("sedan", sites=("site-x",)))
    actions = CampaignActions(env.database, clock=env.clock)
    actions.pause(ALICE, paused)
    actions.abort(ALICE, aborted)
    with env.database.session() as session:
        pending = session.exec(
            select(Assignment.vin).where(Assignment.state == AssignmentState.PENDING)
        ).all()
    taken = next(v for v in pending if v in {vin(0), vin(1), vin(2)})
    number = int(taken[3:])
    assert env.check_in(number).assignment_id
    with env.database.session() as session:
        session.execute(delete(DirectorVehicleState))
    signatures.clear()

    done = presign(env.database, env.director)

    released = {vin(0), vin(1), vin(2)} & set(pending) - {taken}
    assert len(released) == 1, "wave 1 holds 2 vehicles; the third is still queued"
    assert (done.candidates, done.counts.signed) == (1, 1)
    with env.database.session() as session:
        stored = set(session.exec(select(DirectorVehicleState.vin)).all())
    assert stored == released


async def test_the_background_loop_signs_only_while_leading_and_reports_metrics(
    env: Env, signatures: list[str]
) -> None:
    for number in range(3):
        add_vehicle(env.database, number)
    env.start_campaign()
    metrics = ServerMetrics()
    leading = False
    with ThreadPoolExecutor(max_workers=1) as executor:
        loop = PresignLoop(
            Presigner(env.database, env.director),
            leading=lambda: leading,
            executor=executor,
            metrics=metrics,
            interval=0.05,
            batch_size=2,
        )
        task = asyncio.create_task(loop.run())
        await asyncio.sleep(0.2)
        assert signatures == [], "a replica that does not run the engine does not sign"
        leading = True
        loop.wake()
        for _ in range(200):
            if metrics.registry.get_sample_value("staffel_director_presign_rounds_total"):
                break
            await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert metrics.registry.get_sample_value("staffel_director_presigned_total") == 3
    assert metrics.registry.get_sample_value("staffel_director_presign_waiting") == 0
    signatures.clear()
    assert all(env.check_in(number).director is not None for number in range(3))
    assert signatures == []
