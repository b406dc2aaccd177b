"""The series operators watch, scraped from server, relay and vehicles during a campaign.

The demo's story on real processes: a server, an edge relay and three vehicles (one fails
its health check and rolls back) in a campaign of one wave. ``/metrics`` of the server and
the relay is scraped while the campaign runs and once it is complete; each vehicle writes
its node-exporter textfile and logs JSON lines.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from server.sandbox import Sandbox, VehicleSetup, stream_lines, tool
from tests.ops.scrape import Samples

MODEL = "sedan"
HARDWARE_ID = "gateway-x1"
IMAGE_BYTES = 1024 * 1024 + 17
VINS = ("WSF00000000000101", "WSF00000000000102", "WSF00000000000103")
FAILING_HEALTH = ("/bin/sh", "-c", "exit 1")
CHECK_IN = "/staffel.v1.VehicleService/CheckIn"
WAIT_SECONDS = 60.0


def scrape_until(url: str, holds: Callable[[Samples], bool]) -> Samples:
    """Scrapes until ``holds`` is true (gauges read from the store are cached a few seconds)."""
    deadline = time.monotonic() + WAIT_SECONDS
    samples = Samples.scrape(url)
    while not holds(samples) and time.monotonic() < deadline:
        time.sleep(0.25)
        samples = Samples.scrape(url)
    return samples


def run_client(vehicle: VehicleSetup, metrics_file: Path) -> subprocess.Popen[str]:
    """One cycle of a vehicle's client, logging JSON and writing its metrics textfile."""
    command = [
        tool("staffel-client"), "--config", str(vehicle.config), "--once",
        "--log-format", "json", "--metrics-file", str(metrics_file),
    ]  # fmt: skip
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "STAFFEL_LOG_LEVEL": "INFO"},
    )


def test_server_relay_and_vehicles_report_the_campaign(tmp_path: Path) -> None:
    image_path = tmp_path / "gateway-fw-2.0.bin"
    image_path.write_bytes(os.urandom(IMAGE_BYTES))
    with Sandbox(tmp_path / "sandbox") as sandbox:
        server = sandbox.start_server()
        sandbox.make_people(server)
        relay = sandbox.start_relay(server)
        sandbox.staffel(
            server, "image", "upload", str(image_path), "--name", "gateway-fw",
            "--version", "2.0", "--hardware-id", HARDWARE_ID, "--release-counter", "2",
        )  # fmt: skip
        bundle = json.loads(
            sandbox.staffel(
                server, "--json", "bundle", "create", "--name", "sedan-2", "--model", MODEL,
                "gateway-fw-2.0",
            )
        )  # fmt: skip
        vehicles = [
            sandbox.provision_vehicle(
                server,
                relay,
                vin=vin,
                model=MODEL,
                hardware_id=HARDWARE_ID,
                health_command=FAILING_HEALTH if vin == VINS[-1] else ("/bin/true",),
            )
            for vin in VINS
        ]
        campaign = sandbox.start_campaign(
            server, "--name", "gw-2.0", "--bundle", bundle["bundleId"], "--model", MODEL,
            "--max-failure-percent", "50",
        )  # fmt: skip

        # While it runs: one open wave of one, three vehicles not yet reported.
        running = scrape_until(
            server.http,
            lambda s: (
                s.value("staffel_campaigns", state="running") == 1
                and s.value("staffel_campaign_current_wave", campaign=campaign) == 1
            ),
        )
        assert running.value("staffel_campaign_waves", campaign=campaign) == 1
        assert running.value("staffel_wave_assignments", campaign=campaign, wave="1") == 3
        assert running.value("staffel_assignments", state="committed") == 0
        assert running.value("staffel_fleet_state_up") == 1
        # Publishing re-signed the Image repository's online snapshot and timestamp.
        for role in ("snapshot", "timestamp"):
            assert running.value("staffel_signing_seconds_count", repository="image", role=role)
        assert 0 < running.value("staffel_signing_seconds_sum") < WAIT_SECONDS

        metrics_dir = tmp_path / "textfiles"
        metrics_dir.mkdir()
        clients = [run_client(v, metrics_dir / f"{v.vin}.prom") for v in vehicles]
        output = list(stream_lines(clients))
        assert [c.returncode for c in clients] == [0, 0, 0], "\n".join(output)

        done = scrape_until(
            server.http, lambda s: s.value("staffel_campaigns", state="completed") == 1
        )
        assert done.value("staffel_campaigns", state="completed") == 1
        assert done.value("staffel_assignments", state="committed") == 2
        assert done.value("staffel_assignments", state="rolled_back") == 1
        # A finished campaign has no wave progress left to show.
        assert done.value("staffel_campaign_current_wave", campaign=campaign) == 0
        assert done.value("staffel_checkins_total") >= 3
        assert done.value("staffel_checkins_total", outcome="update") == 3
        calls = done.value("staffel_grpc_server_handling_seconds_count", method=CHECK_IN, code="OK")
        assert calls >= 3
        assert 0 < done.value("staffel_grpc_server_handling_seconds_sum", method=CHECK_IN) < 60
        # The Director signed each vehicle's targets when it was offered the update.
        assert done.value("staffel_signing_seconds_count", repository="director", role="targets")
        assert done.value("staffel_vehicle_events_total", kind="committed") == 2

        edge = Samples.scrape(relay.http)
        assert edge.value("staffel_relay_forwarded_rpcs_total", method="CheckIn") >= 3
        assert edge.value("staffel_relay_bytes_served_total") >= 3 * IMAGE_BYTES
        assert edge.value("staffel_relay_bytes_fetched_total") >= IMAGE_BYTES
        assert edge.value("staffel_relay_cache_hits_total") >= 1

    for vehicle in vehicles:
        textfile = Samples.parse((metrics_dir / f"{vehicle.vin}.prom").read_text())
        assert textfile.value("staffel_client_cycles_total", vin=vehicle.vin, result="ok") == 1
        assert textfile.value("staffel_client_events_undelivered") == 0
        assert textfile.value("staffel_client_last_success_timestamp_seconds") > 1e9
    assert not list(metrics_dir.glob(".*.tmp")), "a textfile write was left half done"
    logged = [json.loads(line) for line in output if line.startswith("{")]
    assert logged, "no JSON log line from the clients"
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in logged)
