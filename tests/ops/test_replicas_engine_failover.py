"""Two server replicas on one PostgreSQL: one runs the campaign engine; kill it, the other
takes over, and the campaign completes with counts matching what the vehicles reported.

Both replicas answer the vehicles (virtual ones making real gRPC calls, half to each).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path

import grpc
import psycopg
from staffel.v1 import vehicle_pb2, vehicle_pb2_grpc

from server.observability.enginelock import ENGINE_LOCK_KEY
from server.sandbox import Sandbox, Service
from tests.ops.scrape import Samples

FLEET = 120
WAIT_SECONDS = 120.0


def vin(n: int) -> str:
    return f"WSF{n:014d}"


def fails(n: int) -> bool:
    return n % 10 == 0


async def drive(replicas: list[Service], numbers: list[int]) -> dict[int, str]:
    """Each vehicle checks in at one of the replicas and reports its outcome there."""
    offers: dict[int, str] = {}
    channels = [grpc.aio.insecure_channel(r.grpc) for r in replicas]
    try:

        async def one(n: int) -> None:
            stub = vehicle_pb2_grpc.VehicleServiceStub(channels[n % len(channels)])
            answer = await stub.CheckIn(
                vehicle_pb2.CheckInRequest(
                    vin=vin(n),
                    nonce=os.urandom(16),
                    ecus=[
                        vehicle_pb2.EcuVersion(serial=f"gw-{n}", hardware_id="gw-x1", primary=True)
                    ],
                ),
                timeout=60,
            )
            if answer.WhichOneof("outcome") != "update":
                return
            assignment = answer.update.assignment_id
            kinds = (
                [vehicle_pb2.EVENT_KIND_FAILED]
                if fails(n)
                else [vehicle_pb2.EVENT_KIND_HEALTHY, vehicle_pb2.EVENT_KIND_COMMITTED]
            )
            events = [
                vehicle_pb2.VehicleEvent(
                    event_id=str(uuid.uuid4()),
                    assignment_id=assignment,
                    kind=kind,
                    failure_type=vehicle_pb2.FAILURE_TYPE_INSTALL if fails(n) else 0,
                )
                for kind in kinds
            ]
            reply = await stub.ReportEvents(
                vehicle_pb2.ReportEventsRequest(vin=vin(n), events=events), timeout=60
            )
            assert reply.accepted == len(events)
            offers[n] = assignment

        await asyncio.gather(*(one(n) for n in numbers))
    finally:
        for channel in channels:
            await channel.close()
    return offers


def leaders(replicas: list[Service]) -> list[Service]:
    """The replicas whose /metrics say they hold the engine lock."""
    return [r for r in replicas if Samples.scrape(r.http).value("staffel_engine_leader") == 1]


def wait_for_one_leader(replicas: list[Service]) -> Service:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        holding = leaders(replicas)
        assert len(holding) <= 1, "two replicas ran the campaign engine at once"
        if holding:
            return holding[0]
        time.sleep(0.2)
    raise AssertionError("no replica took the campaign-engine lock")


def lock_holders(postgres_url: str) -> int:
    """Backends holding the engine's advisory lock in the test's own database.

    A bigint key shows as classid (high half) and objid (low half); advisory locks are
    per database, and other databases on this server may hold the same key.
    """
    url = postgres_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(url, autocommit=True) as connection:
        row = connection.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND classid = %s AND objid = %s AND objsubid = 1"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (ENGINE_LOCK_KEY >> 32, ENGINE_LOCK_KEY & 0xFFFFFFFF),
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_survivor_completes_the_campaign_when_the_engine_holder_dies(
    tmp_path: Path, postgres_url: str
) -> None:
    csv = tmp_path / "fleet.csv"
    csv.write_text(
        "vin,model,region,site,tags,ecus\n"
        + "".join(f"{vin(n)},sedan,eu,plant-a,,gw-{n}:gw-x1:primary\n" for n in range(FLEET))
    )
    image = tmp_path / "gw.bin"
    image.write_bytes(os.urandom(4096))
    with Sandbox(tmp_path / "sandbox", database_url=postgres_url) as sandbox:
        replicas = [sandbox.start_server("server-a"), sandbox.start_server("server-b")]
        first = replicas[0]
        sandbox.make_people(first)
        sandbox.staffel(first, "fleet", "import", str(csv))
        sandbox.staffel(
            first, "image", "upload", str(image), "--name", "gw", "--version", "2.0",
            "--hardware-id", "gw-x1", "--release-counter", "2",
        )  # fmt: skip
        sandbox.staffel(first, "bundle", "create", "--name", "b", "--model", "sedan", "gw-2.0")
        campaign_id = sandbox.start_campaign(
            first, "--name", "gw-2", "--bundle", "b1", "--waves", "25%,100%",
            "--success-percent", "80", "--max-failure-percent", "20", "--min-reports", "10",
        )  # fmt: skip

        holder = wait_for_one_leader(replicas)
        assert lock_holders(postgres_url) == 1
        survivor = next(r for r in replicas if r is not holder)

        # Wave 1 through both replicas; then the engine's holder dies mid-campaign.
        offers = await drive(replicas, list(range(FLEET)))
        assert 0 < len(offers) < FLEET
        holder.kill()

        assert wait_for_one_leader([survivor]) is survivor
        assert lock_holders(postgres_url) == 1

        def status() -> dict[str, object]:
            answer: dict[str, object] = json.loads(
                sandbox.staffel(
                    survivor, "--json", "campaign", "status", campaign_id, "--limit", "0"
                )
            )
            return answer

        answer = status()
        deadline = time.monotonic() + WAIT_SECONDS
        while answer.get("currentWave") != 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            answer = status()
        assert answer.get("currentWave") == 2, answer
        offers |= await drive([survivor], list(range(FLEET)))
        while answer["state"] != "CAMPAIGN_STATE_COMPLETED" and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            answer = status()

    assert answer["state"] == "CAMPAIGN_STATE_COMPLETED", answer
    assert len(offers) == FLEET
    failed = sum(1 for n in offers if fails(n))
    assert answer["counts"] == {"total": FLEET, "committed": FLEET - failed, "failed": failed}
