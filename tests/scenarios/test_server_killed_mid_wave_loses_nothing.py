"""Kill the server (SIGKILL) mid-wave, restart it: no assignment lost or duplicated, no
outcome lost or counted twice, and the campaign goes on to its end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import uuid
from pathlib import Path

import grpc
from sqlalchemy import func
from sqlmodel import select
from staffel.v1 import vehicle_pb2, vehicle_pb2_grpc

from server.campaigns.models import Assignment
from server.sandbox import Sandbox, tool
from server.store import Database

FLEET = 400


def vin(n: int) -> str:
    return f"WSF{n:014d}"


def events(assignment_id: str, n: int, fail: bool) -> list[vehicle_pb2.VehicleEvent]:
    kinds = (
        [vehicle_pb2.EVENT_KIND_FAILED]
        if fail
        else [vehicle_pb2.EVENT_KIND_HEALTHY, vehicle_pb2.EVENT_KIND_COMMITTED]
    )
    return [
        vehicle_pb2.VehicleEvent(
            # Stable ids: a resend after the crash is the same event.
            event_id=str(uuid.uuid5(uuid.NAMESPACE_OID, f"{n}-{assignment_id}-{kind}")),
            assignment_id=assignment_id,
            kind=kind,
            failure_type=vehicle_pb2.FAILURE_TYPE_INSTALL if fail else 0,
        )
        for kind in kinds
    ]


async def drive(address: str, numbers: list[int]) -> dict[int, str]:
    """Each vehicle checks in and reports its outcome (every 7th fails); errors are ignored,
    as a vehicle would retry later."""
    offers: dict[int, str] = {}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = vehicle_pb2_grpc.VehicleServiceStub(channel)

        async def one(n: int) -> None:
            with contextlib.suppress(grpc.aio.AioRpcError):
                answer = await stub.CheckIn(
                    vehicle_pb2.CheckInRequest(
                        vin=vin(n),
                        nonce=os.urandom(16),
                        ecus=[vehicle_pb2.EcuVersion(serial=f"gw-{n}", hardware_id="gw-x1",
                                                     primary=True)],
                    ),
                    timeout=30,
                )  # fmt: skip
                if answer.WhichOneof("outcome") != "update":
                    return
                offers[n] = answer.update.assignment_id
                await stub.ReportEvents(
                    vehicle_pb2.ReportEventsRequest(
                        vin=vin(n), events=events(offers[n], n, n % 7 == 0)
                    ),
                    timeout=30,
                )

        await asyncio.gather(*(one(n) for n in numbers))
    return offers


def assignment_rows(database_url: str) -> tuple[int, int]:
    database = Database.from_url(database_url)
    try:
        with database.session() as session:
            rows = session.exec(select(func.count()).select_from(Assignment)).one()
            vins = session.exec(select(func.count(func.distinct(Assignment.vin)))).one()
            return int(rows), int(vins)
    finally:
        database.dispose()


async def test_server_killed_mid_wave_loses_nothing(tmp_path: Path, database_url: str) -> None:
    csv = tmp_path / "fleet.csv"
    csv.write_text(
        "vin,model,region,site,tags,ecus\n"
        + "".join(f"{vin(n)},sedan,eu,plant-a,,gw-{n}:gw-x1:primary\n" for n in range(FLEET))
    )
    image = tmp_path / "gw.bin"
    image.write_bytes(os.urandom(4096))
    with Sandbox(tmp_path / "sandbox", database_url=database_url) as sandbox:
        server = sandbox.start_server()
        sandbox.make_people(server)
        sandbox.tokens["viewer"] = sandbox.staffel(
            server, "token", "create", "--name", "vera", "--role", "viewer", who="admin"
        ).strip()
        sandbox.staffel(server, "fleet", "import", str(csv))
        sandbox.staffel(
            server, "image", "upload", str(image), "--name", "gw", "--version", "2.0",
            "--hardware-id", "gw-x1", "--release-counter", "2",
        )  # fmt: skip
        sandbox.staffel(server, "bundle", "create", "--name", "b", "--model", "sedan", "gw-2.0")
        campaign_id = sandbox.start_campaign(
            server, "--name", "gw-2", "--bundle", "b1", "--waves", "25%,100%",
            # One vehicle in 7 fails; the failure gate leaves room for an unlucky first
            # few reports (the engine may step after only ten), so only the crash is tested.
            "--success-percent", "80", "--max-failure-percent", "50", "--min-reports", "10",
        )  # fmt: skip

        def status() -> dict[str, object]:
            answer: dict[str, object] = json.loads(
                sandbox.staffel(server, "--json", "campaign", "status", campaign_id, "--limit", "0")
            )
            return answer

        # Wave 1 runs; the server dies while half of the vehicles are reporting.
        wave = asyncio.create_task(drive(server.grpc, list(range(FLEET))))
        await asyncio.sleep(1.0)
        server.kill()
        before_restart = await wave
        server = sandbox.start_server()  # same data dir and database
        assert assignment_rows(database_url) == (FLEET, FLEET)
        # A release manager follows the rest live (server-streaming WatchCampaign).
        watch = subprocess.Popen(  # noqa: ASYNC220 - starts at once; read after the run
            [tool("staffel"), "--server", server.grpc, "--token", sandbox.tokens["viewer"],
             "campaign", "status", campaign_id, "--watch"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            # Every vehicle retries its cycle (same event ids): nothing is counted twice.
            offers = await drive(server.grpc, list(range(FLEET)))
            # A vehicle offered before the crash keeps its assignment (same id) after it.
            assert all(offers[n] == a for n, a in before_restart.items() if n in offers)
            offers = before_restart | offers
            for _ in range(100):
                answer = status()
                if answer.get("currentWave") == 2:
                    break
                await asyncio.sleep(0.2)
            assert answer["currentWave"] == 2
            offers |= await drive(server.grpc, list(range(FLEET)))
            for _ in range(100):
                answer = status()
                if answer["state"] == "CAMPAIGN_STATE_COMPLETED":
                    break
                await asyncio.sleep(0.2)
            assert answer["state"] == "CAMPAIGN_STATE_COMPLETED"
            live, _ = watch.communicate(timeout=60)
            snapshots = [block for block in live.split("\n\n") if block.strip()]
            assert len(snapshots) >= 3, live
            assert "(running)" in snapshots[0]
            assert "REACH" in snapshots[0] and "GATE" in snapshots[0]
            assert snapshots[-1].startswith(f"campaign {campaign_id} (completed): {FLEET} vehicles")
            assert assignment_rows(database_url) == (FLEET, FLEET)
            failed = sum(1 for n in offers if n % 7 == 0)
            assert len(offers) == FLEET
            assert answer["counts"] == {
                "total": FLEET, "committed": FLEET - failed, "failed": failed,
            }  # fmt: skip
        finally:
            if watch.poll() is None:  # a failed assertion above: do not leave it running
                watch.kill()
            watch.wait()
            if watch.stdout is not None:
                watch.stdout.close()
