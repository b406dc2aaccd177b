"""A relay that stops answering while a vehicle fetches Image repository metadata.

Real processes: ``staffel-server``, a site ``staffel-relay`` and a ``staffel-client``
vehicle that checks in at the server and fetches metadata and images from the relay. The
relay is stopped and its HTTP port taken by a server that answers the Director's root
requests with 404 (no newer root) and never answers the Image repository's: the vehicle's
metadata fetch times out (ngclient's ``SlowRetrievalError``). That is a network failure,
not a verification failure: the vehicle keeps its assignment and reports nothing failed.
Once the relay is back on its ports, the next cycle verifies the offer again, installs and
commits; the server holds each lifecycle event once and no failure.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from sqlmodel import col, select

from client.slots import FileBootControl
from server.campaigns.models import Assignment, AssignmentState, VehicleEventRecord
from server.sandbox import Sandbox, Service
from server.store import Database

MODEL = "outage-coupe"
HARDWARE_ID = "gateway-m1"
IMAGE_SIZE = 1024 * 1024 + 9  # bytes
FACTORY_IMAGE = b"factory image of slot A\n" * 1024
VIN = "WSF00000000000061"
LIFECYCLE = [
    "checked_in",
    "downloaded",
    "verified",
    "installed",
    "rebooted",
    "healthy",
    "committed",
]
HOLD_SECONDS = 300.0  # the silent server's longest hold (far beyond the client's timeout)
MAX_CYCLES = 4


@contextmanager
def _silent_image_repository(relay: Service) -> Iterator[None]:
    """Serves on the stopped relay's HTTP port: 404 for the Director, silence for images."""
    released = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/director/"):
                self.send_error(404)
                return
            released.wait(HOLD_SECONDS)  # the relay lost its uplink mid-request

        def log_message(self, format: str, *args: object) -> None:
            del format, args

    host, port = relay.http.removeprefix("http://").rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        released.set()
        server.shutdown()
        server.server_close()
        thread.join()


def _events(database: Database) -> list[str]:
    with database.session() as session:
        return [
            e.kind
            for e in session.exec(
                select(VehicleEventRecord).order_by(col(VehicleEventRecord.occurred_at))
            ).all()
        ]


def test_a_metadata_fetch_cut_by_the_relay_is_retried_at_the_next_cycle(tmp_path: Path) -> None:
    image = os.urandom(IMAGE_SIZE)
    image_path = tmp_path / "image.bin"
    image_path.write_bytes(image)
    url = f"sqlite:///{tmp_path / 'server.db'}"
    database = Database.from_url(url)
    with Sandbox(tmp_path / "sandbox", database_url=url) as sandbox:
        server = sandbox.start_server()
        sandbox.make_people(server)
        relay = sandbox.start_relay(server)
        sandbox.staffel(
            server, "image", "upload", str(image_path), "--name", "gateway-fw",
            "--version", "7.0", "--hardware-id", HARDWARE_ID, "--release-counter", "7",
        )  # fmt: skip
        bundle_id = json.loads(
            sandbox.staffel(
                server, "--json", "bundle", "create", "--name", "outage", "--model", MODEL,
                "gateway-fw-7.0",
            )
        )["bundleId"]  # fmt: skip
        vehicle = sandbox.provision_vehicle(
            server, relay, vin=VIN, model=MODEL, hardware_id=HARDWARE_ID
        )
        (vehicle.slots / "A.img").write_bytes(FACTORY_IMAGE)
        # Check-ins go to the server itself; metadata and images come from the relay.
        config = vehicle.config.read_text()
        config = config.replace(f'grpc_target = "{relay.grpc}"', f'grpc_target = "{server.grpc}"')
        config = config.replace(
            "poll_interval_seconds = 10\n",
            "poll_interval_seconds = 10\nnetwork_timeout_seconds = 2\n",
        )
        vehicle.config.write_text(config)
        sandbox.start_campaign(
            server, "--name", "outage", "--bundle", bundle_id, "--max-failure-percent", "100",
            "--vin", VIN,
        )  # fmt: skip

        relay.stop()
        with _silent_image_repository(relay):
            text, _ = sandbox.client_once(vehicle).communicate(timeout=300)
        assert "update offered" in text, text
        assert "cannot fetch Image repository metadata now" in text, text
        assert "SlowRetrievalError" in text or "timed out" in text, text
        assert "update failed" not in text, text
        state = FileBootControl(vehicle.slots).read_state()
        assert (state.committed, state.booted, state.trying) == ("A", "A", None)
        assert _events(database) == ["checked_in"]
        with database.session() as session:
            assignment = session.exec(select(Assignment)).one()
        assert assignment.state is not AssignmentState.FAILED

        sandbox.start_relay(server, listen_like=relay)
        output = ""
        for _ in range(MAX_CYCLES):
            text, _ = sandbox.client_once(vehicle).communicate(timeout=300)
            output += text
            if "committed slot B" in text:
                break
        else:
            raise AssertionError(f"{VIN} did not commit in {MAX_CYCLES} cycles:\n{output}")
        assert "update failed" not in output, output
        state = FileBootControl(vehicle.slots).read_state()
        assert (state.committed, state.booted, state.trying) == ("B", "B", None)
        assert (vehicle.slots / "B.img").read_bytes()[:IMAGE_SIZE] == image
        assert _events(database) == LIFECYCLE
    database.dispose()
