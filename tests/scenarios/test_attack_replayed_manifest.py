"""Replayed or forged vehicle version manifests: refused by the real server, no Director metadata.

The attacker holds the network (a raw gRPC client, or a malicious relay's position): it
replays a check-in the vehicle made earlier (its manifest carries old nonces), or forges
one with a key that is not the ECU's, or names an ECU the vehicle does not have. Each
check-in is refused with a precise status before the Director is asked, while the
vehicle's own fresh check-ins keep working.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc
import pytest
from staffel.v1 import vehicle_pb2, vehicle_pb2_grpc

from client.uptane.manifest import EcuKey, ecu_version_report, sign_report, vehicle_manifest
from server.sandbox import VehicleSetup
from tests.scenarios.installation import Installation

VIN = "WSF0REPLAY0000001"
OFFER_WAIT_SECONDS = 60  # the engine releases the wave on its next step (every second)


def check_in(vehicle: VehicleSetup, *, keys: dict[str, EcuKey]) -> vehicle_pb2.CheckInRequest:
    """A check-in as the vehicle makes it: a fresh manifest, each report signed by ``keys``."""
    reports = [
        sign_report(ecu_version_report(serial, "", 0, ""), key) for serial, key in keys.items()
    ]
    manifest = vehicle_manifest(vehicle.vin, vehicle.serial, reports, keys[vehicle.serial])
    return vehicle_pb2.CheckInRequest(
        vin=vehicle.vin,
        ecus=[
            vehicle_pb2.EcuVersion(
                serial=vehicle.serial, hardware_id=vehicle.hardware_id, primary=True
            )
        ],
        nonce=os.urandom(32),
        manifest=manifest,
    )


def refused(
    stub: vehicle_pb2_grpc.VehicleServiceStub, request: vehicle_pb2.CheckInRequest
) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refusal:
        stub.CheckIn(request, timeout=10)  # no answer at all: no Director metadata
    return refusal.value


def test_replayed_forged_and_unknown_ecu_manifests_get_no_director_metadata(
    installation: Installation, tmp_path: Path
) -> None:
    vehicle = installation.vehicle(VIN)
    gateway_key = EcuKey.load(vehicle.directory / "ecu-keys" / f"{vehicle.serial}.pem")
    installation.start_campaign(VIN)
    with grpc.insecure_channel(installation.server.grpc) as channel:
        stub = vehicle_pb2_grpc.VehicleServiceStub(channel)
        deadline = time.monotonic() + OFFER_WAIT_SECONDS
        while True:
            recorded = check_in(vehicle, keys={vehicle.serial: gateway_key})
            answer = stub.CheckIn(recorded, timeout=10)
            if answer.WhichOneof("outcome") == "update" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert answer.WhichOneof("outcome") == "update", "the campaign never offered the update"
        assert answer.update.director.targets

        # The recorded check-in, replayed as it went by: its nonce was used.
        replay = refused(stub, recorded)
        assert replay.code() == grpc.StatusCode.PERMISSION_DENIED
        assert f"ECU {vehicle.serial}" in replay.details()
        assert "was sent before (a replayed version manifest)" in replay.details()

        # A manifest whose gateway report is signed by a key that is not the ECU's.
        impostor = EcuKey.generate(tmp_path / "impostor.pem")
        forged = refused(stub, check_in(vehicle, keys={vehicle.serial: impostor}))
        assert forged.code() == grpc.StatusCode.PERMISSION_DENIED
        assert f"not signed by ECU {vehicle.serial}'s registered key" in forged.details()

        # A manifest naming an ECU the vehicle does not have (signed by that "ECU").
        ghost = EcuKey.generate(tmp_path / "ghost.pem")
        unknown = refused(
            stub, check_in(vehicle, keys={vehicle.serial: gateway_key, "ghost-9": ghost})
        )
        assert unknown.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "ECU 'ghost-9', which is not registered" in unknown.details()

        # No manifest at all, from a vehicle with registered keys.
        stripped = check_in(vehicle, keys={vehicle.serial: gateway_key})
        stripped.ClearField("manifest")
        missing = refused(stub, stripped)
        assert missing.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "must carry a version manifest" in missing.details()

        # The vehicle's own next check-in, with fresh nonces, still gets its offer.
        assert stub.CheckIn(
            check_in(vehicle, keys={vehicle.serial: gateway_key}), timeout=10
        ).update

    # Through the relay, the replay is refused alike (the server's status passes through).
    with grpc.insecure_channel(installation.relay.grpc) as channel:
        relayed = refused(vehicle_pb2_grpc.VehicleServiceStub(channel), recorded)
    assert relayed.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "replayed version manifest" in relayed.details()
