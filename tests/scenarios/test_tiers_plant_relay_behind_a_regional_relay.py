"""Tiers: a plant relay whose upstream is a regional relay, which fetches from the server.

Real processes on plain HTTP: ``staffel-server``, a regional ``staffel-relay`` in front of
it, a plant ``staffel-relay`` in front of the regional one, and two ``staffel-client``
vehicles behind the plant relay downloading at the same time. Both install and commit;
each tier fetched the image from its upstream exactly once (the plant relay from the
regional one, the regional one from the server: one copy plus a little metadata each, and
what the regional relay served is what the plant relay fetched); every vehicle event
passed both tiers and reached the server.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.request import urlopen

from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import col, select

from client.slots import FileBootControl
from server.campaigns.models import VehicleEventRecord
from server.sandbox import Sandbox, Service, VehicleSetup, stream_lines
from server.store import Database

MODEL = "tier-van"
HARDWARE_ID = "gateway-r1"
IMAGE_SIZE = 6 * 1024 * 1024 + 3  # bytes
METADATA_BOUND = 1024 * 1024  # bytes; far more than every metadata file of one update
FACTORY_IMAGE = b"factory image of slot A\n" * 1024
VINS = ("WSF00000000000071", "WSF00000000000072")
LIFECYCLE = ["checked_in", "downloaded", "verified", "installed", "rebooted", "healthy"]
BOUNDS = 180.0  # seconds; conditions are awaited, never timed
MAX_CYCLES = 4

T = TypeVar("T")


def _wait_for(what: str, probe: Callable[[], T | None]) -> T:
    deadline = time.monotonic() + BOUNDS
    while time.monotonic() < deadline:
        value = probe()
        if value is not None:
            return value
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what} after {BOUNDS} s")


def _metric(relay: Service, name: str) -> float:
    with urlopen(f"{relay.http}/metrics", timeout=10) as answer:  # noqa: S310 (loopback)
        text = answer.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return float(sample.value)
    raise AssertionError(f"{relay.name} exports no {name}")


def _until_all_committed(sandbox: Sandbox, vehicles: list[VehicleSetup]) -> str:
    """Concurrent client cycles until every vehicle committed; all of their output."""
    output = ""
    waiting = list(vehicles)
    for _ in range(MAX_CYCLES):
        output += "\n".join(stream_lines([sandbox.client_once(v) for v in waiting])) + "\n"
        waiting = [v for v in waiting if FileBootControl(v.slots).read_state().committed != "B"]
        if not waiting:
            return output
    raise AssertionError(f"{[v.vin for v in waiting]} did not commit:\n{output}")


def test_a_vehicle_installs_through_a_plant_and_a_regional_relay(tmp_path: Path) -> None:
    image = os.urandom(IMAGE_SIZE)
    image_path = tmp_path / "image.bin"
    image_path.write_bytes(image)
    url = f"sqlite:///{tmp_path / 'server.db'}"
    database = Database.from_url(url)
    with Sandbox(tmp_path / "sandbox", database_url=url) as sandbox:
        server = sandbox.start_server()
        sandbox.make_people(server)
        regional = sandbox.start_relay(server, "regional")
        plant = sandbox.start_relay(regional, "plant")
        sandbox.staffel(
            server, "image", "upload", str(image_path), "--name", "gateway-fw",
            "--version", "6.0", "--hardware-id", HARDWARE_ID, "--release-counter", "6",
        )  # fmt: skip
        bundle_id = json.loads(
            sandbox.staffel(
                server, "--json", "bundle", "create", "--name", "tiers", "--model", MODEL,
                "gateway-fw-6.0",
            )
        )["bundleId"]  # fmt: skip
        vehicles = []
        for vin in VINS:
            vehicle = sandbox.provision_vehicle(
                server, plant, vin=vin, model=MODEL, hardware_id=HARDWARE_ID
            )
            (vehicle.slots / "A.img").write_bytes(FACTORY_IMAGE)
            vehicles.append(vehicle)
        arguments = ["--name", "tiers", "--bundle", bundle_id, "--max-failure-percent", "100"]
        for vin in VINS:
            arguments += ["--vin", vin]
        sandbox.start_campaign(server, *arguments)

        output = _until_all_committed(sandbox, vehicles)
        assert "cannot reach the server" not in output, output
        for vehicle in vehicles:
            state = FileBootControl(vehicle.slots).read_state()
            assert (state.committed, state.booted, state.trying) == ("B", "B", None)
            assert (vehicle.slots / "B.img").read_bytes()[:IMAGE_SIZE] == image

        def all_events() -> dict[str, list[str]] | None:
            with database.session() as session:
                events = session.exec(
                    select(VehicleEventRecord).order_by(col(VehicleEventRecord.occurred_at))
                ).all()
            kinds = {vin: [e.kind for e in events if e.vin == vin] for vin in VINS}
            done = all(mine[-1:] == ["committed"] for mine in kinds.values())
            return kinds if done else None

        events = _wait_for("every vehicle's events at the server", all_events)
        plant_fetched = _metric(plant, "staffel_relay_bytes_fetched_total")
        regional_fetched = _metric(regional, "staffel_relay_bytes_fetched_total")
        regional_served = _metric(regional, "staffel_relay_bytes_served_total")
        plant_served = _metric(plant, "staffel_relay_bytes_served_total")
        upstream_errors = [
            _metric(relay, "staffel_relay_upstream_errors_total") for relay in (plant, regional)
        ]
    database.dispose()

    for vin in VINS:
        assert events[vin] == [*LIFECYCLE, "committed"], vin
    # Exactly one copy of the image per tier, though two vehicles downloaded it.
    assert plant_served >= len(VINS) * IMAGE_SIZE
    assert IMAGE_SIZE <= plant_fetched < IMAGE_SIZE + METADATA_BOUND
    assert IMAGE_SIZE <= regional_fetched < IMAGE_SIZE + METADATA_BOUND
    assert regional_served == plant_fetched
    assert upstream_errors == [0, 0]
    for log in (tmp_path / "sandbox").glob("*.log"):
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, f"{log.name} logged an unexpected error:\n{text[-3000:]}"
