"""The site relay dies at random points of a download: the vehicle resumes, fetches no more
than 1.1 x the image, and installs it byte for byte.

Real processes: the central server, a ``staffel-relay`` that is SIGKILLed at random byte
offsets of the download and restarted on the same ports, and one ``staffel-client`` cycle
that rides over every cut with Range requests (the client's own byte counter, logged at
INFO, gives the bytes it fetched).
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import time
from pathlib import Path

from client.slots import FileBootControl
from server.sandbox import Sandbox, Service, tool
from tests.scenarios.installation import (
    FACTORY_IMAGE,
    HARDWARE_ID,
    IMAGE_NAME,
    IMAGE_VERSION,
    MODEL,
    Installation,
)

VIN = "WSF00000000000061"
IMAGE_SIZE = 48 * 1024 * 1024 + 4099  # bytes
CUTS = 4
MAX_CYCLES = 6  # a cycle gives up after its retry budget; the next one resumes
_FETCHED = re.compile(r"fetched (\d+) bytes in (\d+) requests")


def _restart_relay(sandbox: Sandbox, server: Service, relay: Service) -> Service:
    """Start a relay on the ports (and cache) of ``relay``, which is dead."""
    return sandbox.start(
        relay.name,
        tool("staffel-relay"),
        "--upstream", server.http,
        "--upstream-grpc", server.grpc,
        "--cache-dir", str(sandbox.root / relay.name / "cache"),
        "--grpc-listen", relay.grpc,
        "--http-listen", relay.http.removeprefix("http://"),
    )  # fmt: skip


def _wait_for_bytes(path: Path, offset: int, client: subprocess.Popen[bytes]) -> bool:
    """Wait until the slot file holds ``offset`` bytes; False when the client ended first."""
    while client.poll() is None:
        if path.exists() and path.stat().st_size >= offset:
            return True
        time.sleep(0.001)
    return False


def test_relay_killed_mid_download_ends_byte_identical_under_1_1_x(tmp_path: Path) -> None:
    rng = random.Random()
    image = os.urandom(IMAGE_SIZE)
    image_path = tmp_path / "image.bin"
    image_path.write_bytes(image)
    with Sandbox(tmp_path / "sandbox", database_url=f"sqlite:///{tmp_path / 's.db'}") as sandbox:
        server = sandbox.start_server()
        sandbox.make_people(server)
        relay = sandbox.start_relay(server)
        sandbox.staffel(
            server, "image", "upload", str(image_path), "--name", IMAGE_NAME,
            "--version", IMAGE_VERSION, "--hardware-id", HARDWARE_ID, "--release-counter", "2",
        )  # fmt: skip
        bundle = json.loads(
            sandbox.staffel(
                server, "--json", "bundle", "create", "--name", "cut", "--model", MODEL,
                f"{IMAGE_NAME}-{IMAGE_VERSION}",
            )
        )  # fmt: skip
        installation = Installation(
            sandbox=sandbox, server=server, relay=relay, database_url="", image=image,
            target_name=f"{IMAGE_NAME}-{IMAGE_VERSION}", bundle_id=bundle["bundleId"],
        )  # fmt: skip
        vehicle = installation.vehicle(VIN)
        installation.start_campaign(VIN)
        cut_points = sorted(
            rng.randrange(IMAGE_SIZE // 20, IMAGE_SIZE * 9 // 10) for _ in range(CUTS)
        )
        slot_b = vehicle.slots / "B.img"
        fetched, cuts_made, cycles = 0, 0, 0
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "STAFFEL_LOG_LEVEL": "INFO"}
        while cycles < MAX_CYCLES:
            cycles += 1
            log_path = tmp_path / f"client-{cycles}.log"
            with log_path.open("wb") as log:
                client = subprocess.Popen(
                    [tool("staffel-client"), "--config", str(vehicle.config), "--once"],
                    stdout=log, stderr=subprocess.STDOUT, env=env,
                )  # fmt: skip
                try:
                    while cuts_made < CUTS and _wait_for_bytes(
                        slot_b, cut_points[cuts_made], client
                    ):
                        relay.kill()
                        cuts_made += 1
                        time.sleep(rng.uniform(0, 0.5))
                        relay = _restart_relay(sandbox, server, relay)
                    exit_code = client.wait(timeout=300)
                finally:
                    client.kill()
                    client.wait()
            output = log_path.read_text()
            fetched += sum(int(match.group(1)) for match in _FETCHED.finditer(output))
            if exit_code == 0 and "committed slot B" in output:
                break
        else:
            raise AssertionError(f"no cycle committed after {MAX_CYCLES}:\n{output[-3000:]}")

    assert cuts_made == CUTS, f"the download ended before the cuts at {cut_points}"
    state = FileBootControl(vehicle.slots).read_state()
    assert (state.committed, state.booted, state.trying) == ("B", "B", None)
    assert slot_b.read_bytes()[:IMAGE_SIZE] == image
    assert (vehicle.slots / "A.img").read_bytes() == FACTORY_IMAGE
    print(
        f"{CUTS} relay kills at bytes {cut_points}: fetched {fetched} bytes for a "
        f"{IMAGE_SIZE}-byte image ({fetched / IMAGE_SIZE:.3f} x) in {cycles} cycle(s)"
    )
    assert IMAGE_SIZE <= fetched < 1.1 * IMAGE_SIZE
