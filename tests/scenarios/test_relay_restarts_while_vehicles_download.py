"""The site relay is killed and restarted while several vehicles download through it.

Real processes: the central server, a ``staffel-relay`` SIGKILLed twice while four
``staffel-client`` processes download the same image through it, and restarted each time
on the same ports and cache. Every vehicle resumes (Range requests, further cycles when a
cycle's retry budget ran out) and ends with the image byte for byte in slot B, committed.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from client.slots import FileBootControl
from server.sandbox import Sandbox, VehicleSetup

MODEL = "restart-sedan"
HARDWARE_ID = "gateway-r1"
IMAGE_SIZE = 40 * 1024 * 1024 + 333  # bytes
FACTORY_IMAGE = b"factory image of slot A\n" * 1024
VINS = tuple(f"WSF0000000000009{n}" for n in range(4))
CUT_FRACTIONS = (0.1, 0.5)  # of the image, reached by every vehicle
MAX_CYCLES = 6
BOUNDS = 300.0  # seconds; conditions are awaited, never timed


def _smallest_slot_b(vehicles: list[VehicleSetup]) -> int:
    """Bytes in the slot B of the vehicle that downloaded least (0 before all began)."""
    paths = [v.slots / "B.img" for v in vehicles]
    return min((p.stat().st_size if p.exists() else 0) for p in paths)


def _wait_for_download(
    vehicles: list[VehicleSetup], offset: int, clients: list[subprocess.Popen[str]]
) -> bool:
    """Wait until every vehicle's slot B holds ``offset`` bytes (all of them are downloading,
    past their metadata); False when every client ended first."""
    deadline = time.monotonic() + BOUNDS
    while time.monotonic() < deadline and any(c.poll() is None for c in clients):
        if _smallest_slot_b(vehicles) >= offset:
            return True
        time.sleep(0.002)
    return False


def test_vehicles_resume_and_finish_when_the_relay_restarts_mid_download(tmp_path: Path) -> None:
    image = os.urandom(IMAGE_SIZE)
    image_path = tmp_path / "image.bin"
    image_path.write_bytes(image)
    url = f"sqlite:///{tmp_path / 'server.db'}"
    with Sandbox(tmp_path / "sandbox", database_url=url) as sandbox:
        server = sandbox.start_server()
        sandbox.make_people(server)
        relay = sandbox.start_relay(server)
        sandbox.staffel(
            server, "image", "upload", str(image_path), "--name", "gateway-fw",
            "--version", "5.0", "--hardware-id", HARDWARE_ID, "--release-counter", "5",
        )  # fmt: skip
        bundle_id = json.loads(
            sandbox.staffel(
                server, "--json", "bundle", "create", "--name", "restart", "--model", MODEL,
                "gateway-fw-5.0",
            )
        )["bundleId"]  # fmt: skip
        vehicles = []
        for vin in VINS:
            vehicle = sandbox.provision_vehicle(
                server, relay, vin=vin, model=MODEL, hardware_id=HARDWARE_ID
            )
            (vehicle.slots / "A.img").write_bytes(FACTORY_IMAGE)
            vehicles.append(vehicle)
        arguments = ["--name", "restart", "--bundle", bundle_id, "--max-failure-percent", "100"]
        for vin in VINS:
            arguments += ["--vin", vin]
        sandbox.start_campaign(server, *arguments)

        clients = [sandbox.client_once(v) for v in vehicles]
        cuts = 0
        for fraction in CUT_FRACTIONS:
            if not _wait_for_download(vehicles, int(IMAGE_SIZE * fraction), clients):
                break
            relay.kill()
            cuts += 1
            relay = sandbox.start_relay(server, listen_like=relay)
        outputs = {
            v.vin: c.communicate(timeout=BOUNDS)[0] for v, c in zip(vehicles, clients, strict=True)
        }
        for vehicle in vehicles:
            for _ in range(MAX_CYCLES):
                if "committed slot B" in outputs[vehicle.vin]:
                    break
                client = sandbox.client_once(vehicle)
                outputs[vehicle.vin] += client.communicate(timeout=BOUNDS)[0]

    assert cuts == len(CUT_FRACTIONS), "the downloads ended before the relay was cut"
    for vehicle in vehicles:
        output = outputs[vehicle.vin]
        assert "committed slot B" in output, f"{vehicle.vin}:\n{output[-3000:]}"
        state = FileBootControl(vehicle.slots).read_state()
        assert (state.committed, state.booted, state.trying) == ("B", "B", None)
        assert (vehicle.slots / "B.img").read_bytes()[:IMAGE_SIZE] == image
        assert (vehicle.slots / "A.img").read_bytes() == FACTORY_IMAGE
