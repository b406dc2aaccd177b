"""Heartbeat check-ins end to end: the real client against the real server, over gRPC.

The vehicle's first check-in carries a manifest signed by its provisioned key that commits
to a hash chain; while its inventory stays the same, the next check-ins carry the chain's
links instead (counted by the server's metrics, not guessed from timing). A restarted
server holds no chain: the first heartbeat falls back to a signed manifest in the same
cycle, which still succeeds. An offer reaches a vehicle that checks in with a heartbeat,
and after the install (a new inventory) the vehicle signs a manifest again.
"""

from __future__ import annotations

import json
import re
import urllib.request

from client.slots import FileBootControl
from server.sandbox import Service, VehicleSetup
from tests.scenarios.installation import FACTORY_IMAGE, HARDWARE_ID, MODEL, Installation

VIN = "WSF0HEARTBEAT0001"


def heartbeats(server: Service, outcome: str) -> int:
    """The server's count of heartbeat check-ins with ``outcome``."""
    with urllib.request.urlopen(f"{server.http}/metrics", timeout=10) as answer:  # noqa: S310
        text = answer.read().decode()
    found = re.search(
        rf'^staffel_checkin_heartbeats_total{{outcome="{outcome}"}} ([0-9.e+]+)$',
        text,
        re.MULTILINE,
    )
    return int(float(found.group(1))) if found else 0


def check_ins(server: Service) -> dict[str, int]:
    """The server's heartbeat counts by outcome."""
    return {o: heartbeats(server, o) for o in ("accepted", "fell_back", "refused")}


def run_once(installation: Installation, vehicle: VehicleSetup) -> list[str]:
    """One update cycle of the real client; it must succeed. Its output lines."""
    codes, lines = installation.run_clients(vehicle)
    assert codes == [0], "\n".join(lines)
    return lines


def point_at(vehicle: VehicleSetup, server: Service) -> None:
    """The vehicle's config names ``server`` (a restarted server has new ports)."""
    text = vehicle.config.read_text()
    text = re.sub(r'^grpc_target = ".*"$', f'grpc_target = "{server.grpc}"', text, flags=re.M)
    text = re.sub(r'^repo_url = ".*"$', f'repo_url = "{server.http}"', text, flags=re.M)
    vehicle.config.write_text(text)


def chain_state(vehicle: VehicleSetup) -> dict[str, object]:
    state: dict[str, object] = json.loads(
        (vehicle.directory / "state" / "heartbeat.json").read_text()
    )
    return state


def test_unchanged_vehicles_send_heartbeats_and_fall_back_to_manifests(
    installation: Installation,
) -> None:
    sandbox, server = installation.sandbox, installation.server
    vehicle = sandbox.provision_vehicle(
        server, server, vin=VIN, model=MODEL, hardware_id=HARDWARE_ID
    )
    (vehicle.slots / "A.img").write_bytes(FACTORY_IMAGE)

    # First check-in: a signed manifest committing to a chain the server now holds.
    assert any("nothing to do" in line for line in run_once(installation, vehicle))
    assert check_ins(server) == {"accepted": 0, "fell_back": 0, "refused": 0}
    first = chain_state(vehicle)
    assert first["held"] is True and first["revealed"] == 0

    # Unchanged: the next check-ins are heartbeats, one link each.
    for _ in range(2):
        assert any("nothing to do" in line for line in run_once(installation, vehicle))
    assert check_ins(server) == {"accepted": 2, "fell_back": 0, "refused": 0}
    assert chain_state(vehicle)["revealed"] == 2

    # A restarted server holds no chain: the heartbeat falls back, the cycle succeeds.
    server.stop()
    server = sandbox.start_server()  # the same data folder and database
    point_at(vehicle, server)
    assert any("nothing to do" in line for line in run_once(installation, vehicle))
    assert check_ins(server) == {"accepted": 0, "fell_back": 1, "refused": 0}
    renewed = chain_state(vehicle)
    assert renewed["seed"] != first["seed"] and renewed["revealed"] == 0
    run_once(installation, vehicle)
    assert check_ins(server) == {"accepted": 1, "fell_back": 1, "refused": 0}

    # An offer reaches a vehicle checking in with a heartbeat (not a quiet answer).
    sandbox.start_campaign(
        server, "--name", "heartbeat", "--bundle", installation.bundle_id,
        "--max-failure-percent", "100", "--vin", VIN,
    )  # fmt: skip
    lines = run_once(installation, vehicle)
    assert any("update offered" in line for line in lines), "\n".join(lines)
    assert any("committed slot B" in line for line in lines), "\n".join(lines)
    assert FileBootControl(vehicle.slots).read_state().committed == "B"
    assert check_ins(server)["accepted"] == 2

    # Installed: a new inventory, so the next check-in signs a manifest (no heartbeat) ...
    run_once(installation, vehicle)
    assert check_ins(server) == {"accepted": 2, "fell_back": 1, "refused": 0}
    after_install = chain_state(vehicle)
    assert after_install["seed"] != renewed["seed"] and after_install["revealed"] == 0
    assert after_install["inventory"] != renewed["inventory"]
    # ... and the one after is a heartbeat again.
    run_once(installation, vehicle)
    assert check_ins(server) == {"accepted": 3, "fell_back": 1, "refused": 0}
