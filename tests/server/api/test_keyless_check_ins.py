"""A vehicle without ECU keys, new to the process or after the offer epoch moved: "no
keys" is confirmed in the check-in's own read.

The manifest gate trusts "no keys" only while the offer epoch stands still. A check-in
without a manifest from a vehicle the gate does not hold, or holds as keyless from before
the epoch moved (a campaign started), confirms "no keys" in the same registry read the
check-in makes anyway, instead of the gate reading the keys first; a key registered
meanwhile refuses the check-in before anything is stored.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from sqlalchemy import update
from staffel.v1 import vehicle_pb2, vehicle_pb2_grpc

from client.uptane.manifest import EcuKey
from keys.keyset import init_keyset
from server.app import ServerConfig, StaffelServer
from server.campaigns.lifecycle import CampaignActions
from server.campaigns.plan import CampaignPlan
from server.fleet.models import Ecu
from server.fleet.registry import get_vehicle
from server.fleet.selectors import FleetSelector
from tests.server.campaigns.support import ALICE, BOB, NEW_SHA, OLD_SHA, add_vehicle, publish, vin

NUMBER = 7


@pytest.fixture
async def server(tmp_path: Path, database_url: str) -> AsyncIterator[StaffelServer]:
    """A real server (gRPC on loopback) whose engine is stepped by the test."""
    init_keyset(tmp_path / "keys")
    staffel = StaffelServer(
        ServerConfig(
            data_dir=tmp_path / "data",
            keys_dir=tmp_path / "keys",
            database_url=database_url,
            grpc_listen="127.0.0.1:0",
            http_listen="127.0.0.1:0",
            engine_interval_seconds=0,
            offer_epoch_seconds=0.2,
        )
    )
    await staffel.start()
    yield staffel
    await staffel.stop()


@pytest.fixture
def key_reads(server: StaffelServer) -> Iterator[list[str]]:
    """The gate's own reads of a vehicle's ECU keys while the test runs."""
    seen: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if "fleet_ecu.public_key !=" in statement and "fleet_vehicle" not in statement:
            seen.append(statement)

    server.database.listen("before_cursor_execute", note)
    yield seen
    server.database.remove_listener("before_cursor_execute", note)


def _request(installed: str = OLD_SHA) -> vehicle_pb2.CheckInRequest:
    return vehicle_pb2.CheckInRequest(
        vin=vin(NUMBER),
        nonce=os.urandom(16),
        ecus=[
            vehicle_pb2.EcuVersion(
                serial=f"gw-{NUMBER}", hardware_id="gw-x1", primary=True, installed_sha256=installed
            )
        ],
    )


async def _start_campaign(server: StaffelServer, bundle: str) -> None:
    actions = CampaignActions(server.database)
    created = actions.create(
        ALICE, name="gw-2", bundle_id=bundle, selector=FleetSelector("sedan"), plan=CampaignPlan()
    )
    actions.approve(BOB, created.campaign_id)
    actions.start(ALICE, created.campaign_id)
    server.engine.step()
    server.quiet.refresh(server.database)


async def test_a_keyless_vehicle_gets_its_offer_without_the_gate_reading_keys_again(
    server: StaffelServer, key_reads: list[str]
) -> None:
    add_vehicle(server.database, NUMBER)
    bundle = publish(server.database)
    server.quiet.refresh(server.database)  # the epoch is known when the gate reads
    async with grpc.aio.insecure_channel(server.grpc_address) as channel:
        stub = vehicle_pb2_grpc.VehicleServiceStub(channel)
        first = await stub.CheckIn(_request())
        assert first.WhichOneof("outcome") == "nothing_to_do"
        assert key_reads == [], "new to the process: confirmed in the check-in's own read"

        await _start_campaign(server, bundle)
        key_reads.clear()
        offered = await stub.CheckIn(_request())
        assert offered.WhichOneof("outcome") == "update"
        assert key_reads == [], "no keys was confirmed in the check-in's own registry read"

        again = await stub.CheckIn(_request())
        assert again.update.assignment_id == offered.update.assignment_id
        assert key_reads == [], "trusted again at the new epoch"


async def test_a_key_registered_meanwhile_refuses_the_check_in_and_stores_nothing(
    server: StaffelServer, tmp_path: Path, key_reads: list[str]
) -> None:
    add_vehicle(server.database, NUMBER)
    server.quiet.refresh(server.database)  # the epoch is known when the gate reads
    async with grpc.aio.insecure_channel(server.grpc_address) as channel:
        stub = vehicle_pb2_grpc.VehicleServiceStub(channel)
        assert (await stub.CheckIn(_request())).WhichOneof("outcome") == "nothing_to_do"

        key = EcuKey.generate(tmp_path / "gw.key")
        with server.database.session() as session:
            session.exec(
                update(Ecu)  # type: ignore[call-overload]
                .where(Ecu.serial == f"gw-{NUMBER}")
                .values(public_key=key.public_key_json())
            )
        server.quiet.refresh(server.database)  # the epoch moved with the key
        key_reads.clear()

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            # Claims a new image without a manifest: refused before it is stored.
            await stub.CheckIn(_request(installed=NEW_SHA))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "must carry a version manifest" in (refused.value.details() or "")
        registered = get_vehicle(server.database, vin(NUMBER))
        assert [e.installed_sha256 for e in registered.ecus] == [OLD_SHA]
        assert key_reads == [], "refused in the check-in's own read"

        with pytest.raises(grpc.aio.AioRpcError) as again:
            await stub.CheckIn(_request())
        assert again.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert key_reads == [], "forgotten by the gate, refused by the check-in's read again"
        assert [e.installed_sha256 for e in get_vehicle(server.database, vin(NUMBER)).ecus] == [
            OLD_SHA
        ]
