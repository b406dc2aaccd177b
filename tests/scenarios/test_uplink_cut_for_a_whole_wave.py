"""The uplink of a site is down for a whole wave: the site installs anyway and loses no event.

Real processes: ``staffel-server``, a site ``staffel-relay`` that stages the bundle, and
three vehicles' ``staffel-client``. Each vehicle checks in while the uplink is up (the
server signs its Director metadata then; it expires after a day and is renewed only when
less than six hours are left, so a cached answer covers an outage of at least 18 hours) and
is cut off right after. The uplink is then cut by stopping the server process (SIGTERM);
every vehicle installs from the relay's cache and reports into the relay's outbox. The
server is started again on the same ports and data: every event reaches it exactly once,
in order per vehicle, and the campaign completes with three commits.
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
from server.campaigns.models import Assignment, AssignmentState, VehicleEventRecord
from server.clock import as_utc
from server.sandbox import Sandbox, Service, VehicleSetup, tool
from server.store import Database

MODEL = "outage-sedan"
HARDWARE_ID = "gateway-o1"
IMAGE_SIZE = 16 * 1024 * 1024 + 5  # bytes
FACTORY_IMAGE = b"factory image of slot A\n" * 1024
SITE = "plant-zwickau"
VINS = ("WSF00000000000081", "WSF00000000000082", "WSF00000000000083")
LIFECYCLE = [
    "checked_in",
    "downloaded",
    "verified",
    "installed",
    "rebooted",
    "healthy",
    "committed",
]
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


def _relay_metric(relay: Service, name: str) -> float:
    with urlopen(f"{relay.http}/metrics", timeout=10) as answer:  # noqa: S310 (loopback)
        text = answer.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"the relay exports no {name}")


def _check_in_then_cut_off(sandbox: Sandbox, vehicle: VehicleSetup, *, verify: bool) -> None:
    """One cycle, killed once the vehicle took its offer (it reported nothing yet).

    With ``verify`` it is killed only once its download began, so that it verified the
    offer and the relay cached the Image repository's metadata; otherwise right after the
    check-in, and it checks in again (through the relay) when the uplink is down.
    """
    client = sandbox.client_once(vehicle)
    assert client.stdout is not None
    slot_b = vehicle.slots / "B.img"
    try:
        for line in client.stdout:
            if "checked in, update offered" in line:
                break
        else:
            raise AssertionError(f"{vehicle.vin} was offered no update")
        while verify and client.poll() is None:
            if slot_b.exists() and slot_b.stat().st_size > 0:
                break
            time.sleep(0.001)
        assert client.poll() is None, f"{vehicle.vin} ended its cycle before the cut"
    finally:
        client.kill()
        client.wait()
        client.stdout.close()


def _cycles_until_committed(sandbox: Sandbox, vehicle: VehicleSetup) -> str:
    """Client cycles until the vehicle committed; all of their output."""
    output = ""
    for _ in range(MAX_CYCLES):
        client = sandbox.client_once(vehicle)
        text, _ = client.communicate(timeout=300)
        output += text
        if "committed slot B" in text:
            return output
    raise AssertionError(f"{vehicle.vin} did not commit in {MAX_CYCLES} cycles:\n{output}")


def _restart_server(sandbox: Sandbox, server: Service) -> Service:
    """The server again, on the ports and data of ``server`` (which is stopped)."""
    assert sandbox.database_url is not None
    return sandbox.start(
        server.name,
        tool("staffel-server"),
        "--data-dir", str(sandbox.root / server.name),
        "--keys-dir", str(sandbox.init_keys()),
        "--grpc-listen", server.grpc,
        "--http-listen", server.http.removeprefix("http://"),
        "--poll-seconds", "5",
        "--database-url", sandbox.database_url,
    )  # fmt: skip


def test_uplink_cut_for_a_whole_wave_loses_no_event(tmp_path: Path) -> None:
    image = os.urandom(IMAGE_SIZE)
    image_path = tmp_path / "image.bin"
    image_path.write_bytes(image)
    url = f"sqlite:///{tmp_path / 'server.db'}"
    database = Database.from_url(url)
    with Sandbox(tmp_path / "sandbox", database_url=url) as sandbox:
        server = sandbox.start_server()
        sandbox.make_people(server)
        relay = sandbox.start_relay(
            server,
            options=("--site", SITE, "--relay-id", "relay-zw-1", "--staging-interval", "0.5"),
        )
        sandbox.staffel(
            server, "image", "upload", str(image_path), "--name", "gateway-fw",
            "--version", "4.0", "--hardware-id", HARDWARE_ID, "--release-counter", "4",
        )  # fmt: skip
        bundle_id = json.loads(
            sandbox.staffel(
                server, "--json", "bundle", "create", "--name", "outage", "--model", MODEL,
                "gateway-fw-4.0",
            )
        )["bundleId"]  # fmt: skip
        vehicles = []
        for vin in VINS:
            vehicle = sandbox.provision_vehicle(
                server, relay, vin=vin, model=MODEL, hardware_id=HARDWARE_ID, site=SITE
            )
            (vehicle.slots / "A.img").write_bytes(FACTORY_IMAGE)
            vehicles.append(vehicle)
        arguments = ["--name", "outage", "--bundle", bundle_id, "--max-failure-percent", "100"]
        for vin in VINS:
            arguments += ["--vin", vin]
        campaign_id = sandbox.start_campaign(server, *arguments)

        # The wave opens once the relay staged the bundle; each vehicle takes its offer.
        def released() -> bool | None:
            with database.session() as session:
                states = session.exec(select(Assignment.state)).all()
            return (len(states) == len(VINS) and AssignmentState.QUEUED not in states) or None

        _wait_for("the wave to open at the site", released)
        for index, vehicle in enumerate(vehicles):
            _check_in_then_cut_off(sandbox, vehicle, verify=index == 0)

        # The uplink goes down for the whole wave: the server process stops.
        server.stop()
        outage_began = time.time()
        outputs = {v.vin: _cycles_until_committed(sandbox, v) for v in vehicles}
        for vehicle in vehicles:
            state = FileBootControl(vehicle.slots).read_state()
            assert (state.committed, state.booted, state.trying) == ("B", "B", None)
            assert (vehicle.slots / "B.img").read_bytes()[:IMAGE_SIZE] == image
            assert "cannot reach the server" not in outputs[vehicle.vin], outputs[vehicle.vin]
        assert _relay_metric(relay, "staffel_relay_queue_depth") == len(VINS) * len(LIFECYCLE)
        outage_ended = time.time()

        # The uplink returns: the relay forwards its outbox.
        server = _restart_server(sandbox, server)

        def forwarded() -> list[VehicleEventRecord] | None:
            with database.session() as session:
                events = list(
                    session.exec(
                        select(VehicleEventRecord).order_by(
                            col(VehicleEventRecord.vin), col(VehicleEventRecord.occurred_at)
                        )
                    ).all()
                )
            return events if len(events) >= len(VINS) * len(LIFECYCLE) else None

        events = _wait_for("every event at the server", forwarded)
        _wait_for(
            "the relay's empty outbox",
            lambda: _relay_metric(relay, "staffel_relay_queue_depth") == 0 or None,
        )
        assert _relay_metric(relay, "staffel_relay_events_forwarded_total") == len(events)
        assert _relay_metric(relay, "staffel_relay_events_rejected_total") == 0
        campaign: dict[str, object] = {}
        for _ in range(int(BOUNDS / 0.5)):
            campaign = json.loads(
                sandbox.staffel(server, "--json", "campaign", "status", campaign_id)
            )
            if campaign.get("state") == "CAMPAIGN_STATE_COMPLETED":
                break
            time.sleep(0.5)
    database.dispose()

    # Exactly once and in order per vehicle: each step once, and none received before an
    # earlier step of the same vehicle; all of them happened during the outage.
    assert len(events) == len(VINS) * len(LIFECYCLE)
    for vin in VINS:
        mine = [e for e in events if e.vin == vin]
        assert [e.kind for e in mine] == LIFECYCLE, vin
        received = [as_utc(e.received_at) for e in mine]
        assert received == sorted(received), f"{vin}'s events arrived out of order"
        for event in mine[1:]:
            assert outage_began <= as_utc(event.occurred_at).timestamp() <= outage_ended
    assert campaign["state"] == "CAMPAIGN_STATE_COMPLETED", campaign
    assert campaign["counts"] == {"total": len(VINS), "committed": len(VINS)}
