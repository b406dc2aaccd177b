"""``make demo``: one update, end to end, on real processes over loopback.

A release manager publishes an image and runs a campaign; three vehicles fetch it through an
edge relay, verify it (Uptane: Director and Image repository must agree), install it into
slot B, reboot, run their health check and commit. The third vehicle's health check fails on
purpose, so it rolls back to slot A by itself.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

from server.sandbox import Sandbox, VehicleSetup, stream_lines

MODEL = "demo-sedan"
HARDWARE_ID = "gateway-x1"
IMAGE_BYTES = 4 * 1024 * 1024
VINS = ("WSF00000000000001", "WSF00000000000002", "WSF00000000000003")
FAILING_HEALTH = (
    "/bin/sh",
    "-c",
    "echo 'service brake-monitor did not start' >&2; exit 1",
)


def say(message: str) -> None:
    """One line of the demo's narration."""
    print(f"[demo] {message}", flush=True)


def make_image(path: Path, size: int) -> str:
    """Writes a deterministic stand-in for an ECU image and returns its SHA-256."""
    block = hashlib.sha256(b"staffel demo image").digest() * 2048
    with path.open("wb") as image:
        written = 0
        while written < size:
            piece = block[: size - written]
            image.write(piece)
            written += len(piece)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def slot_summary(vehicle: VehicleSetup, image_sha256: str) -> str:
    """Which slot the vehicle boots and whether it holds the published image."""
    import json  # noqa: PLC0415

    state = json.loads((vehicle.slots / "bootstate.json").read_text())
    booted = state.get("booted") or state.get("active")
    slot_file = vehicle.slots / f"{booted}.img"
    digest = hashlib.sha256(slot_file.read_bytes()).hexdigest() if slot_file.exists() else ""
    holds = "the published image" if digest == image_sha256 else "its previous image"
    return f"boots slot {booted}, which holds {holds}"


def run_demo(root: Path) -> int:
    """Runs the whole story under ``root``; 0 when every vehicle ended as expected."""
    with Sandbox(root) as sandbox:
        say(f"working in {root}")
        say("creating the key sets of the Image and Director repositories")
        sandbox.init_keys()
        server = sandbox.start_server()
        say(f"server up: gRPC {server.grpc}, HTTP {server.http} (SQLite store)")
        sandbox.make_people(server)
        say("tokens issued: admin (bootstrapped), release-manager, approver")
        relay = sandbox.start_relay(server)
        say(f"edge relay up: gRPC {relay.grpc}, HTTP {relay.http}, upstream {server.http}")

        image_path = root / "gateway-fw-2.0.bin"
        image_sha256 = make_image(image_path, IMAGE_BYTES)
        say(f"release manager uploads gateway-fw 2.0 ({IMAGE_BYTES // 1024 // 1024} MiB)")
        print(
            sandbox.staffel(
                server, "image", "upload", str(image_path), "--name", "gateway-fw",
                "--version", "2.0", "--hardware-id", HARDWARE_ID, "--release-counter", "2",
            ).strip()
        )  # fmt: skip
        print(
            sandbox.staffel(
                server, "bundle", "create", "--name", "sedan-2026-11", "--model", MODEL,
                "gateway-fw-2.0",
            ).strip()
        )  # fmt: skip

        vehicles = []
        for index, vin in enumerate(VINS):
            failing = index == len(VINS) - 1
            vehicles.append(
                sandbox.provision_vehicle(
                    server,
                    relay,
                    vin=vin,
                    model=MODEL,
                    hardware_id=HARDWARE_ID,
                    health_command=FAILING_HEALTH if failing else ("/bin/true",),
                )
            )
            note = " (its health check will fail on purpose)" if failing else ""
            say(f"provisioned vehicle {vin}, talking to the relay{note}")

        created = sandbox.staffel(
            server, "campaign", "create", "--name", "gw-2.0", "--bundle", "b1", "--model", MODEL,
            "--max-failure-percent", "50",
        )  # fmt: skip
        print(created.strip())
        say("the approver (not the author) approves campaign c1")
        print(sandbox.staffel(server, "campaign", "approve", "c1", who="approver").strip())
        print(sandbox.staffel(server, "campaign", "start", "c1").strip())
        sandbox.wait_released(server, "c1")

        say("vehicles check in through the relay and update")
        clients = [sandbox.client_once(vehicle) for vehicle in vehicles]
        for line in stream_lines(clients):
            print(f"  {line}", flush=True)
        failed_clients = [v.vin for v, c in zip(vehicles, clients, strict=True) if c.returncode]

        status = ""
        for _ in range(50):
            status = sandbox.staffel(server, "campaign", "status", "c1")
            if "(completed)" in status:
                break
            time.sleep(0.2)
        status = "\n".join(line for line in status.splitlines() if not line.startswith("... and"))
        say("campaign status at the server:")
        print(status.rstrip())
        say("summary")
        for vehicle in vehicles:
            print(f"vehicle {vehicle.vin}: {slot_summary(vehicle, image_sha256)}")
        summary = status.splitlines()[0]
        print(summary)

        expected = "(completed): 3 vehicles, 2 committed, 1 rolled back"
        if failed_clients or expected not in summary:
            say(f"unexpected outcome (expected '{expected}'; client errors: {failed_clients})")
            return 1
        say("done: every process is stopped")
        return 0


def main() -> int:
    """Entry point of ``make demo``."""
    root = Path(tempfile.mkdtemp(prefix="staffel-demo-"))
    try:
        return run_demo(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
