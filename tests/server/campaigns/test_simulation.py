"""10,000 virtual vehicles through a 4-wave campaign over real gRPC, on SQLite and PostgreSQL.

The vehicles are a load generator (check-ins and event reports, batched with asyncio), not
full clients. The server runs in this process with a controlled clock, and the test calls
the engine's step itself, so soak times pass instantly and nothing sleeps.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from staffel.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    campaign_pb2,
    campaign_pb2_grpc,
    fleet_pb2,
    fleet_pb2_grpc,
    release_pb2,
    release_pb2_grpc,
    vehicle_pb2,
    vehicle_pb2_grpc,
)

from keys.keyset import init_keyset
from server.app import ServerConfig, StaffelServer
from server.auth.roles import ENGINE, Role
from server.auth.tokens import create_token
from tests.server.campaigns.support import ManualClock

FLEET = 10_000
SOAK = timedelta(minutes=10)
CONCURRENCY = 48
# Three hardware variants, one of them rare: the canary must still hold it.
VARIANTS = ("gw-x1", "gw-x1;tcu-a", "gw-x2")
T = TypeVar("T")


def vin(n: int) -> str:
    return f"WSF{n:014d}"


def hardware(n: int) -> list[str]:
    share = n % 100
    return VARIANTS[0 if share < 80 else 1 if share < 97 else 2].split(";")


def fleet_csv() -> bytes:
    lines = ["vin,model,region,site,tags,ecus"]
    for n in range(FLEET):
        ecus = ";".join(
            f"{hw}-{n}:{hw}" + (":primary" if i == 0 else "") for i, hw in enumerate(hardware(n))
        )
        lines.append(f"{vin(n)},sedan,eu,plant-{n % 7},fleet,{ecus}")
    return ("\n".join(lines) + "\n").encode()


async def bounded(calls: Iterable[Awaitable[T]]) -> list[T]:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(call: Awaitable[T]) -> T:
        async with gate:
            return await call

    return await asyncio.gather(*(one(c) for c in calls))


class Vehicles:
    """The load generator: what each virtual vehicle sends."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = vehicle_pb2_grpc.VehicleServiceStub(channel)
        self.reported: Counter[str] = Counter()

    async def check_in(self, n: int) -> str:
        answer = await self.stub.CheckIn(
            vehicle_pb2.CheckInRequest(
                vin=vin(n),
                nonce=os.urandom(16),
                ecus=[
                    vehicle_pb2.EcuVersion(serial=f"{hw}-{n}", hardware_id=hw, primary=i == 0)
                    for i, hw in enumerate(hardware(n))
                ],
            )
        )
        if answer.WhichOneof("outcome") != "update":
            return ""
        assert answer.update.director.targets
        return answer.update.assignment_id

    async def report(self, n: int, assignment_id: str, *, fail: bool) -> None:
        kinds = (
            [vehicle_pb2.EVENT_KIND_DOWNLOADED, vehicle_pb2.EVENT_KIND_FAILED]
            if fail
            else [
                vehicle_pb2.EVENT_KIND_DOWNLOADED,
                vehicle_pb2.EVENT_KIND_INSTALLED,
                vehicle_pb2.EVENT_KIND_REBOOTED,
                vehicle_pb2.EVENT_KIND_HEALTHY,
                vehicle_pb2.EVENT_KIND_COMMITTED,
            ]
        )
        events = [
            vehicle_pb2.VehicleEvent(
                event_id=str(uuid.uuid4()),
                assignment_id=assignment_id,
                kind=kind,
                failure_type=(
                    vehicle_pb2.FAILURE_TYPE_VERIFICATION
                    if kind == vehicle_pb2.EVENT_KIND_FAILED
                    else vehicle_pb2.FAILURE_TYPE_UNSPECIFIED
                ),
            )
            for kind in kinds
        ]
        answer = await self.stub.ReportEvents(
            vehicle_pb2.ReportEventsRequest(vin=vin(n), events=events)
        )
        assert answer.accepted == len(events)
        self.reported["failed" if fail else "committed"] += 1

    async def take(self, numbers: Iterable[int]) -> dict[int, str]:
        numbers = list(numbers)
        offers = await bounded(self.check_in(n) for n in numbers)
        return {n: a for n, a in zip(numbers, offers, strict=True) if a}

    async def finish(self, offers: dict[int, str], failing: set[int] = frozenset()) -> None:
        await bounded(self.report(n, a, fail=n in failing) for n, a in offers.items())


@pytest.fixture
async def server(tmp_path: Path, database_url: str) -> AsyncIterator[StaffelServer]:
    init_keyset(tmp_path / "keys")
    clock = ManualClock()
    staffel = StaffelServer(
        ServerConfig(
            data_dir=tmp_path / "data",
            keys_dir=tmp_path / "keys",
            database_url=database_url,
            grpc_listen="127.0.0.1:0",
            http_listen="127.0.0.1:0",
            engine_interval_seconds=0,
        ),
        clock=clock,
    )
    await staffel.start()
    yield staffel
    await staffel.stop()


async def test_ten_thousand_vehicles_in_four_waves(server: StaffelServer) -> None:
    started = time.monotonic()
    clock = server.clock
    assert isinstance(clock, ManualClock)
    admin = create_token(server.database, name="admin", role=Role.ADMIN, created_by=ENGINE)

    async def step() -> None:
        await asyncio.to_thread(server.engine.step)

    async with grpc.aio.insecure_channel(server.grpc_address) as channel:
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        tokens = {}
        for name, role in (("alice", "release_manager"), ("bob", "approver")):
            made = await auth.CreateToken(
                auth_pb2.CreateTokenRequest(name=name, role=role),
                metadata=[("authorization", f"Bearer {admin}")],
            )
            tokens[name] = [("authorization", f"Bearer {made.token}")]
        alice, bob = tokens["alice"], tokens["bob"]

        imported = await fleet_pb2_grpc.FleetServiceStub(channel).ImportVehicles(
            iter([fleet_pb2.ImportVehiclesChunk(csv=fleet_csv())]), metadata=alice
        )
        assert imported.imported == FLEET
        releases = release_pb2_grpc.ReleaseServiceStub(channel)
        for hw in ("gw-x1", "gw-x2", "tcu-a"):

            async def chunks(hw: str = hw) -> AsyncIterator[release_pb2.UploadImageChunk]:
                yield release_pb2.UploadImageChunk(
                    header=release_pb2.ImageHeader(
                        name=hw, version="2.0", hardware_id=hw, release_counter=2
                    )
                )
                yield release_pb2.UploadImageChunk(data=hw.encode() * 100)

            await releases.UploadImage(chunks(), metadata=alice)
        bundle = await releases.CreateBundle(
            release_pb2.CreateBundleRequest(
                name="sedan-2", vehicle_model="sedan",
                image_target_names=["gw-x1-2.0", "gw-x2-2.0", "tcu-a-2.0"],
            ),
            metadata=alice,
        )  # fmt: skip
        campaigns = campaign_pb2_grpc.CampaignServiceStub(channel)
        created = await campaigns.CreateCampaign(
            campaign_pb2.CreateCampaignRequest(
                name="gw-2", bundle_id=bundle.bundle_id,
                selector=campaign_pb2.FleetSelector(tags=["fleet"]),
                waves=[campaign_pb2.WaveSpec(percent=p) for p in (1, 10, 50, 100)],
                gate=campaign_pb2.Gate(
                    success_percent=90, max_failure_percent=5, min_reports=50,
                    soak_seconds=int(SOAK.total_seconds()),
                ),
            ),
            metadata=alice,
        )  # fmt: skip
        campaign_id = created.campaign_id
        await campaigns.ApproveCampaign(
            campaign_pb2.CampaignAction(campaign_id=campaign_id), metadata=bob
        )
        await campaigns.StartCampaign(
            campaign_pb2.StartCampaignRequest(campaign_id=campaign_id), metadata=alice
        )

        async def status(limit: int = 1) -> campaign_pb2.Campaign:
            return await campaigns.GetCampaign(
                campaign_pb2.GetCampaignRequest(campaign_id=campaign_id, assignment_limit=limit),
                metadata=alice,
            )

        full = await status(FLEET)
        wave_of = {int(a.vin[3:]): a.wave for a in full.assignments}
        members = {w: sorted(n for n, k in wave_of.items() if k == w) for w in (1, 2, 3, 4)}
        assert [len(members[w]) for w in (1, 2, 3, 4)] == [100, 900, 4000, 5000]
        assert {"+".join(sorted(hardware(n))) for n in members[1]} == {
            "gw-x1", "gw-x1+tcu-a", "gw-x2",
        }  # fmt: skip

        async def soak_then_open(wave: int) -> None:
            await step()
            assert (await status()).current_wave == wave - 1
            clock.advance(seconds=SOAK.total_seconds() - 1)
            await step()
            assert (await status()).current_wave == wave - 1, "opened before the soak ended"
            clock.advance(seconds=1)
            await step()
            assert (await status()).current_wave == wave

        vehicles = Vehicles(channel)
        # Wave 1: only its members get the update; a sample of the others gets nothing.
        probe = members[4][:200]
        offers = await vehicles.take(members[1] + probe)
        assert sorted(offers) == members[1]
        await vehicles.finish(offers)
        await soak_then_open(2)

        # Wave 2: 20 vehicles stay offline; they are kept out of the rates.
        offline = members[2][:20]
        offers = await vehicles.take(members[2][20:])
        await vehicles.finish(offers)
        await soak_then_open(3)

        # Wave 3: 10% of the first 1,000 reports fail: the failure gate pauses by itself.
        first_half, second_half = members[3][:1000], members[3][1000:]
        offers = await vehicles.take(first_half)
        failing = set(first_half[::10])
        await vehicles.finish(offers, failing)
        await step()
        paused = await status()
        assert paused.state == campaign_pb2.CAMPAIGN_STATE_PAUSED
        assert "failure gate of wave 3" in paused.pause_reason
        assert await vehicles.take(second_half[:100]) == {}, "paused: no new offers"
        await campaigns.ResumeCampaign(
            campaign_pb2.CampaignAction(campaign_id=campaign_id, reason="bad batch"),
            metadata=alice,
        )
        offers = await vehicles.take(second_half)
        await vehicles.finish(offers)
        await soak_then_open(4)

        offers = await vehicles.take(members[4] + offline)
        await vehicles.finish(offers)
        await step()
        final = await status()

    assert final.state == campaign_pb2.CAMPAIGN_STATE_COMPLETED
    opened = [w.opened_at.ToDatetime() for w in final.waves]
    assert all(b - a >= SOAK for a, b in itertools.pairwise(opened))
    assert final.counts.total == FLEET
    assert final.counts.committed == vehicles.reported["committed"] == FLEET - len(failing)
    assert final.counts.failed == vehicles.reported["failed"] == len(failing)
    print(f"\n10k-vehicle simulation took {time.monotonic() - started:.1f} s")
