"""Power cuts at random instants of an update: the vehicle always boots a verified image.

One repository server and one gRPC ``VehicleService`` serve every case. Each case
provisions a fresh vehicle, runs the real ``staffel-client`` process and SIGKILLs it at a
random instant within one step (download and write, boot switch, reboot, health check,
commit, rollback), then restores power: the simulated bootloader boots once, and the
client is restarted until it is idle. Every boot must start a slot holding a verified
image, and every case must end committed on the new image or back on the old one with the
failure reported, every event delivered.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from functools import partial
from http.server import ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from staffel.v1 import vehicle_pb2, vehicle_pb2_grpc
from tuf.api.metadata import TargetFile

from client.journal import Journal, Outbox
from client.slots import FileBootControl, SimulatedBootloader
from tests.client.support import (
    FACTORY_IMAGE,
    DirectorRepository,
    ImageRepository,
    QuietHandler,
    RecordingVehicleService,
    Repositories,
    image_bytes,
    write_config,
    write_vehicle,
)

CUTS = int(os.environ.get("STAFFEL_POWER_CUTS", "100"))
IMAGE = image_bytes(2 * 1024 * 1024 + 77)
CLIENT = str(Path(sys.executable).with_name("staffel-client"))
# The line each step starts after, the step's name, and how long it lasts at most (s).
STEPS = {
    "checked in, update offered": "download+write",
    "verified ": "boot switch",
    "installed into slot": "reboot",
    "rebooted into slot": "health",
    "healthy": "commit",
    "health failed": "rollback",
}
SPAN = {"checked in, update offered": 0.08, "rebooted into slot": 0.12}
SHORT_SPAN = 0.01
TERMINAL = {"COMMITTED", "ROLLED_BACK", "FAILED"}
SUCCESS = {"CHECKED_IN", "DOWNLOADED", "VERIFIED", "INSTALLED", "REBOOTED", "HEALTHY", "COMMITTED"}
VERIFIED = {hashlib.sha256(FACTORY_IMAGE).hexdigest(), hashlib.sha256(IMAGE).hexdigest()}


class OfferingService(RecordingVehicleService):
    """Offers the current assignment until the vehicle reported how it ended."""

    def CheckIn(  # noqa: N802 - gRPC method name
        self, request: vehicle_pb2.CheckInRequest, context: grpc.ServicerContext
    ) -> vehicle_pb2.CheckInResponse:
        """Answer nothing-to-do once the offered assignment has a terminal event."""
        response = super().CheckIn(request, context)
        if response.WhichOneof("outcome") == "update" and self.finished(
            response.update.assignment_id
        ):
            return vehicle_pb2.CheckInResponse(
                nothing_to_do=vehicle_pb2.NothingToDo(), next_poll_seconds=60
            )
        return response

    def kinds_of(self, assignment_id: str) -> list[str]:
        """The event kinds that arrived for one assignment."""
        return [
            vehicle_pb2.EventKind.Name(event.kind).removeprefix("EVENT_KIND_")
            for event in list(self.events)
            if event.assignment_id == assignment_id
        ]

    def finished(self, assignment_id: str) -> bool:
        """Whether a terminal event arrived for the assignment."""
        return bool(TERMINAL & set(self.kinds_of(assignment_id)))


class World:
    """The repositories, the service, and the one published image."""

    def __init__(self, root: Path) -> None:
        served = root / "served"
        served.mkdir(parents=True)
        self.repositories = Repositories(
            url="", image=ImageRepository(served), director=DirectorRepository(served)
        )
        self.http = ThreadingHTTPServer(
            ("127.0.0.1", 0), partial(QuietHandler, directory=str(served))
        )
        self.http.daemon_threads = True
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.repositories.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.target: TargetFile = self.repositories.image.add_image(
            "gw-2.0", IMAGE, release_counter=2
        )
        self.service = OfferingService()
        self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        vehicle_pb2_grpc.add_VehicleServiceServicer_to_server(self.service, self.grpc)
        self.grpc_target = f"127.0.0.1:{self.grpc.add_insecure_port('127.0.0.1:0')}"
        self.grpc.start()

    def close(self) -> None:
        """Stop both servers."""
        self.grpc.stop(grace=None).wait()
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One repository server and one VehicleService for every case."""
    built = World(tmp_path_factory.mktemp("world"))
    yield built
    built.close()


def _run(config: Path, kill_after: tuple[str, float] | None) -> tuple[int, list[str], str]:
    """Run one client cycle; with ``kill_after``, SIGKILL it that long after that line."""
    process = subprocess.Popen(
        [CLIENT, "--config", str(config), "--once"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    lines: list[str] = []
    marker_seen = threading.Event()
    step = "startup"

    def read() -> None:
        nonlocal step
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            for prefix, name in STEPS.items():
                if line.split(": ", 1)[-1].startswith(prefix):
                    step = name
            if kill_after and kill_after[0] in line:
                marker_seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if kill_after is not None:
        while not marker_seen.wait(0.005) and process.poll() is None:
            pass
        if marker_seen.is_set():
            time.sleep(kill_after[1])
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
    process.wait(timeout=120)
    reader.join(timeout=10)
    process.stdout.close()
    return process.returncode, lines, step


def _booted_image_is_verified(slots: Path) -> bool:
    state = FileBootControl(slots).read_state()
    path = slots / f"{state.booted}.img"
    return path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() in VERIFIED


def test_power_cuts_at_random_instants(world: World, tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("STAFFEL_POWER_CUT_SEED", "6")))
    markers = list(STEPS)
    cut_steps: Counter[str] = Counter()
    unbootable = lost = committed = rolled_back = 0
    for case in range(CUTS):
        vehicle = write_vehicle(tmp_path / f"v{case}", world.repositories, world.grpc_target)
        healthy = case % 4 != 3
        write_config(
            vehicle.config_path,
            grpc_target=world.grpc_target,
            repo_url=world.repositories.url,
            health_command=["/bin/sh", "-c", "sleep 0.1" if healthy else "sleep 0.1; exit 1"],
        )
        assignment = f"cut-{case}"
        world.service.offer(assignment, world.repositories.director.metadata_for([world.target]))
        marker = rng.choice([m for m in markers if (m == "health failed") != healthy] or markers)
        if not healthy and marker == "healthy":
            marker = "health failed"
        delay = rng.uniform(0.0, SPAN.get(marker, SHORT_SPAN))
        _, _, step = _run(vehicle.config_path, (marker, delay))
        cut_steps[step] += 1
        slots = vehicle.slots_dir
        # Power is back: the bootloader boots once, then the client starts again.
        SimulatedBootloader(FileBootControl(slots), slots).reboot()
        unbootable += not _booted_image_is_verified(slots)
        for _ in range(6):
            code, lines, _ = _run(vehicle.config_path, None)
            unbootable += not _booted_image_is_verified(slots)
            idle = Journal(vehicle.state_dir / "journal.json").read().update is None
            if idle and code == 0 and world.service.finished(assignment):
                break
        state = FileBootControl(slots).read_state()
        kinds = world.service.kinds_of(assignment)
        outbox_empty = len(Outbox(vehicle.state_dir / "outbox")) == 0
        if state.committed == "B" and state.trying is None and "COMMITTED" in kinds:
            committed += 1
            lost += not (set(kinds) >= SUCCESS and outbox_empty)
            assert healthy, f"case {case}: a vehicle with failing health committed: {kinds}"
            assert (slots / "B.img").read_bytes() == IMAGE
        elif state.committed == "A" and state.trying is None and TERMINAL & set(kinds):
            rolled_back += 1
            lost += not outbox_empty or "COMMITTED" in kinds
            assert (slots / "A.img").read_bytes() == FACTORY_IMAGE
        else:
            lost += 1
            pytest.fail(f"case {case} ({step}): ended in {state} with events {kinds}: {lines}")
    print(
        f"\n{CUTS} power cuts, {unbootable} unbootable, {lost} lost events "
        f"({committed} committed, {rolled_back} back on the old image; cuts per step: "
        f"{dict(sorted(cut_steps.items()))})"
    )
    assert CUTS >= 100 or "STAFFEL_POWER_CUTS" in os.environ
    assert (unbootable, lost) == (0, 0)
    assert committed + rolled_back == CUTS
    assert committed > 0
    assert rolled_back > 0
