"""Replayed or forged heartbeats: refused by the real server, directly and through the relay.

The attacker holds the network (a raw gRPC client, or the relay's position on the path): it
saw the vehicle's heartbeat check-ins go by, so it knows every link revealed so far, and
everything computable from them (hashing a link gives the one revealed before it). It
replays a captured heartbeat, sends the links it can compute, or a link of its own, or
pairs a captured link with another inventory. Each is refused with a precise status, and
the vehicle's own next heartbeat still passes.
"""

from __future__ import annotations

import hashlib
import json
import os

import grpc
import pytest
from staffel.v1 import vehicle_pb2, vehicle_pb2_grpc

from client.uptane.heartbeat import chain_link
from server.sandbox import VehicleSetup
from tests.scenarios.installation import Installation
from tests.scenarios.test_heartbeat_check_ins import check_ins, run_once

VIN = "WSF0HEARTBEAT0002"


def heartbeat(vehicle: VehicleSetup, link: bytes, sha256: str = "") -> vehicle_pb2.CheckInRequest:
    """A heartbeat check-in of ``vehicle`` as it goes over the wire."""
    return vehicle_pb2.CheckInRequest(
        vin=vehicle.vin,
        ecus=[
            vehicle_pb2.EcuVersion(
                serial=vehicle.serial,
                hardware_id=vehicle.hardware_id,
                installed_sha256=sha256,
                primary=True,
            )
        ],
        nonce=os.urandom(32),
        heartbeat=link,
    )


def captured(vehicle: VehicleSetup) -> bytes:
    """The link the vehicle's last heartbeat revealed (what an eavesdropper saw)."""
    state = json.loads((vehicle.directory / "state" / "heartbeat.json").read_text())
    return chain_link(bytes.fromhex(state["seed"]), state["length"] - state["revealed"])


def refused(
    stub: vehicle_pb2_grpc.VehicleServiceStub, request: vehicle_pb2.CheckInRequest
) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refusal:
        stub.CheckIn(request, timeout=10)
    return refusal.value


def test_captured_heartbeats_are_worth_nothing(installation: Installation) -> None:
    vehicle = installation.vehicle(VIN)  # checks in through the relay
    server = installation.server
    run_once(installation, vehicle)  # the signed manifest: the chain is committed
    run_once(installation, vehicle)  # a heartbeat, seen by the relay
    assert check_ins(server)["accepted"] == 1
    seen = captured(vehicle)

    with grpc.insecure_channel(server.grpc) as channel:
        stub = vehicle_pb2_grpc.VehicleServiceStub(channel)
        # The captured heartbeat, replayed as it went by.
        replay = refused(stub, heartbeat(vehicle, seen))
        assert replay.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "replayed or forged heartbeat" in replay.details()
        # What can be computed from it: the links revealed before (the anchor at last).
        older = refused(stub, heartbeat(vehicle, hashlib.sha256(seen).digest()))
        assert older.code() == grpc.StatusCode.PERMISSION_DENIED
        # A link of the attacker's own.
        forged = refused(stub, heartbeat(vehicle, os.urandom(32)))
        assert forged.code() == grpc.StatusCode.PERMISSION_DENIED
        # A captured link claiming another inventory (a rollback hidden from the server).
        hidden = refused(stub, heartbeat(vehicle, seen, sha256="ee" * 32))
        assert hidden.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "signed version manifest" in hidden.details()
        # A heartbeat with a manifest beside it.
        both = heartbeat(vehicle, seen)
        both.manifest = b"{}"
        assert refused(stub, both).code() == grpc.StatusCode.INVALID_ARGUMENT

    # Through the relay, the replay is refused alike (the server's status passes through).
    with grpc.insecure_channel(installation.relay.grpc) as channel:
        relayed = refused(vehicle_pb2_grpc.VehicleServiceStub(channel), heartbeat(vehicle, seen))
    assert relayed.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "replayed or forged heartbeat" in relayed.details()
    assert check_ins(server) == {"accepted": 1, "fell_back": 0, "refused": 6}

    # The refusals moved nothing: the vehicle's own next heartbeat passes.
    run_once(installation, vehicle)
    assert check_ins(server) == {"accepted": 2, "fell_back": 0, "refused": 6}
