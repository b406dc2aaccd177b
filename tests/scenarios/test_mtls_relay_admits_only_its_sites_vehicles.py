"""mTLS at the site relay: only vehicles holding a fleet certificate of its site get through.

Real processes and real TLS: ``staffel-server``, a ``staffel-relay`` serving its site with
mTLS (a relay certificate from the sandbox's fleet CA, issued by ``keys.fleet_ca``), and
three ``staffel-client`` vehicles registered at that site, all three in the campaign:

- one holds a fleet certificate of the relay's site: it checks in, fetches the Director
  root, the Image repository metadata and the image over https, installs and commits, and
  its events reach the server;
- one trusts the fleet CA but holds no certificate: the TLS handshake refuses it;
- one holds a certificate of another site: the relay's site policy refuses it.

The refused vehicles' calls reach neither the server (their assignments stay pending, no
event is stored, the relay forwarded nothing for them) nor a slot (their boot state is
unchanged and slot B was never written).
"""

from __future__ import annotations

import json
import os
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.request import urlopen

from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import col, select

from client.slots import FileBootControl
from server.campaigns.models import Assignment, AssignmentState, VehicleEventRecord
from server.sandbox import Sandbox, Service, VehicleSetup
from server.store import Database

MODEL = "mtls-sedan"
HARDWARE_ID = "gateway-t1"
IMAGE_SIZE = 2 * 1024 * 1024 + 17  # bytes
FACTORY_IMAGE = b"factory image of slot A\n" * 1024
SITE = "plant-leipzig"
OTHER_SITE = "plant-graz"
TRUSTED, BARE, STRANGER = "WSF00000000000091", "WSF00000000000092", "WSF00000000000093"
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


def _relay_samples(sandbox: Sandbox, relay: Service) -> dict[tuple[str, str], float]:
    """The relay's metrics over mTLS (``/metrics`` wants any fleet certificate)."""
    scraper = sandbox.fleet_ca().issue_relay("scraper", site=SITE, out=sandbox.root / "scraper")
    context = ssl.create_default_context(cafile=str(sandbox.fleet_ca().cert_path))
    context.load_cert_chain(scraper.cert, scraper.key)
    with urlopen(f"{relay.http}/metrics", timeout=10, context=context) as answer:  # noqa: S310
        text = answer.read().decode()
    return {
        (sample.name, ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _cycles_until_committed(sandbox: Sandbox, vehicle: VehicleSetup) -> str:
    output = ""
    for _ in range(MAX_CYCLES):
        text, _ = sandbox.client_once(vehicle).communicate(timeout=300)
        output += text
        if "committed slot B" in text:
            return output
    raise AssertionError(f"{vehicle.vin} did not commit in {MAX_CYCLES} cycles:\n{output}")


def _assignment_states(database: Database) -> dict[str, AssignmentState]:
    with database.session() as session:
        return {a.vin: a.state for a in session.exec(select(Assignment)).all()}


def _events(database: Database, vin: str) -> list[str]:
    with database.session() as session:
        return [
            e.kind
            for e in session.exec(
                select(VehicleEventRecord)
                .where(VehicleEventRecord.vin == vin)
                .order_by(col(VehicleEventRecord.occurred_at))
            ).all()
        ]


def test_only_vehicles_with_a_certificate_of_the_relays_site_install(tmp_path: Path) -> None:
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
            tls_site=SITE,
            options=("--relay-id", "relay-lej-1", "--staging-interval", "0.5"),
        )
        assert relay.http.startswith("https://"), relay.http
        sandbox.staffel(
            server, "image", "upload", str(image_path), "--name", "gateway-fw",
            "--version", "5.0", "--hardware-id", HARDWARE_ID, "--release-counter", "5",
        )  # fmt: skip
        bundle_id = json.loads(
            sandbox.staffel(
                server, "--json", "bundle", "create", "--name", "mtls", "--model", MODEL,
                "gateway-fw-5.0",
            )
        )["bundleId"]  # fmt: skip
        certificate_sites = {TRUSTED: SITE, BARE: None, STRANGER: OTHER_SITE}
        vehicles: dict[str, VehicleSetup] = {}
        for vin, certificate_site in certificate_sites.items():
            vehicle = sandbox.provision_vehicle(
                server, relay, vin=vin, model=MODEL, hardware_id=HARDWARE_ID, site=SITE,
                certificate_site=certificate_site,
            )  # fmt: skip
            (vehicle.slots / "A.img").write_bytes(FACTORY_IMAGE)
            vehicles[vin] = vehicle
        arguments = ["--name", "mtls", "--bundle", bundle_id, "--max-failure-percent", "100"]
        for vin in vehicles:
            arguments += ["--vin", vin]
        sandbox.start_campaign(server, *arguments)
        _wait_for(
            "the wave to open at the site (the relay staged the bundle over TLS)",
            lambda: set(_assignment_states(database).values()) == {AssignmentState.PENDING} or None,
        )

        # The two vehicles the relay must refuse try first.
        for vin in (BARE, STRANGER):
            text, _ = sandbox.client_once(vehicles[vin]).communicate(timeout=300)
            assert "cannot reach the server" in text, text
            assert "update offered" not in text, text
        refused = _relay_samples(sandbox, relay)
        assert refused[("staffel_relay_refused_total", "reason=other_site")] == 1
        assert refused.get(("staffel_relay_forwarded_rpcs_total", "method=CheckIn"), 0) == 0
        for vin in (BARE, STRANGER):
            state = FileBootControl(vehicles[vin].slots).read_state()
            assert (state.committed, state.booted, state.trying) == ("A", "A", None), vin
            assert not (vehicles[vin].slots / "B.img").exists(), vin
            assert _events(database, vin) == [], vin
        assert _assignment_states(database)[BARE] is AssignmentState.PENDING
        assert _assignment_states(database)[STRANGER] is AssignmentState.PENDING

        # The vehicle of the relay's site installs through it, over mTLS end to end.
        output = _cycles_until_committed(sandbox, vehicles[TRUSTED])
        assert "cannot reach the server" not in output, output
        state = FileBootControl(vehicles[TRUSTED].slots).read_state()
        assert (state.committed, state.booted, state.trying) == ("B", "B", None)
        assert (vehicles[TRUSTED].slots / "B.img").read_bytes()[:IMAGE_SIZE] == image
        _wait_for(
            "the trusted vehicle's events at the server",
            lambda: _events(database, TRUSTED) == LIFECYCLE or None,
        )
        samples = _relay_samples(sandbox, relay)
        assert samples[("staffel_relay_bytes_served_total", "")] >= IMAGE_SIZE
        assert samples[("staffel_relay_refused_total", "reason=other_site")] == 1
        assert _assignment_states(database)[TRUSTED] is AssignmentState.COMMITTED
        assert _events(database, BARE) == _events(database, STRANGER) == []
    database.dispose()
    for log in (tmp_path / "sandbox").glob("*.log"):
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, f"{log.name} logged an unexpected error:\n{text[-3000:]}"
