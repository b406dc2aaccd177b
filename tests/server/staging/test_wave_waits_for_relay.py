"""The real server's engine opens a wave at a relay's site only once the relay staged it.

Real processes: ``staffel-server`` (its engine steps every second) and ``staffel-relay``
processes with a site, a relay id and a staging interval. A site without a relay is never
held; a relay that never becomes ready holds its site only for the server's
``--staging-wait``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from sqlmodel import select

from client.slots import FileBootControl
from server.campaigns.models import Assignment, AssignmentState
from server.clock import as_utc
from server.sandbox import Sandbox, Service, VehicleSetup
from server.staging.models import RelayReadiness, StagingWait
from server.store import Database

MODEL = "staging-sedan"
HARDWARE_ID = "gateway-s1"
IMAGE = os.urandom(1024 * 1024 + 17)
FACTORY_IMAGE = b"factory image of slot A\n" * 1024
RELAY_SITE = "plant-munich"
BOUNDS = 120.0  # seconds; conditions are awaited, never timed
RELAYED_VIN = "WSF00000000000071"
DIRECT_VIN = "WSF00000000000072"

T = TypeVar("T")


def _wait_for(what: str, probe: Callable[[], T | None]) -> T:
    deadline = time.monotonic() + BOUNDS
    while time.monotonic() < deadline:
        value = probe()
        if value is not None:
            return value
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what} after {BOUNDS} s")


class Site:
    """A server with one published bundle, and a way to read its store."""

    def __init__(self, sandbox: Sandbox, staging_wait: float) -> None:
        assert sandbox.database_url is not None
        self.sandbox = sandbox
        self.database = Database.from_url(sandbox.database_url)
        self.server = sandbox.start_server(staging_wait=staging_wait)
        sandbox.make_people(self.server)
        image_path = sandbox.root / "image.bin"
        image_path.write_bytes(IMAGE)
        sandbox.staffel(
            self.server, "image", "upload", str(image_path), "--name", "gateway-fw",
            "--version", "3.0", "--hardware-id", HARDWARE_ID, "--release-counter", "3",
        )  # fmt: skip
        self.bundle_id = json.loads(
            sandbox.staffel(
                self.server, "--json", "bundle", "create", "--name", "staged", "--model",
                MODEL, "gateway-fw-3.0",
            )
        )["bundleId"]  # fmt: skip

    def relay(self, listen_like: Service | None = None) -> Service:
        """The site's relay, staging every half second."""
        return self.sandbox.start_relay(
            self.server,
            "relay-muc",
            options=(
                "--site", RELAY_SITE, "--relay-id", "relay-muc-1", "--staging-interval", "0.5",
            ),
            listen_like=listen_like,
        )  # fmt: skip

    def vehicle(self, vin: str, via: Service, site: str) -> VehicleSetup:
        """A vehicle of ``site`` talking to ``via``, slot A holding its factory image."""
        vehicle = self.sandbox.provision_vehicle(
            self.server, via, vin=vin, model=MODEL, hardware_id=HARDWARE_ID, site=site
        )
        (vehicle.slots / "A.img").write_bytes(FACTORY_IMAGE)
        return vehicle

    def readiness(self) -> RelayReadiness | None:
        """What the site's relay last reported, if it did."""
        with self.database.session() as session:
            return session.get(RelayReadiness, "relay-muc-1")

    def assignment(self, vin: str) -> Assignment:
        """The vehicle's assignment in campaign c1."""
        with self.database.session() as session:
            found = session.exec(select(Assignment).where(Assignment.vin == vin)).one()
            session.expunge(found)
            return found

    def ready(self, sha256: str) -> RelayReadiness | None:
        """The relay's last report once it holds the blob ``sha256``."""
        readiness = self.readiness()
        if readiness is None or sha256 not in readiness.cached_sha256.split():
            return None
        return readiness

    def released(self, vin: str) -> Assignment | None:
        """The vehicle's assignment once the engine released it."""
        assignment = self.assignment(vin)
        return None if assignment.state == AssignmentState.QUEUED else assignment

    def staging_wait(self) -> StagingWait | None:
        """When the engine first found the relay's site not ready for wave 1."""
        with self.database.session() as session:
            return session.get(StagingWait, (1, 1, RELAY_SITE))

    def start_campaign(self, *vins: str) -> str:
        """Creates, approves and starts a one-wave campaign of the bundle."""
        arguments = ["--name", "staged", "--bundle", self.bundle_id]
        for vin in vins:
            arguments += ["--vin", vin]
        # The wave may be held at the relay's site: that is what these tests watch.
        return self.sandbox.start_campaign(self.server, *arguments, wait_released=False)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    """Processes under ``tmp_path`` (the server's store in ``server.db``), stopped at the end."""
    url = f"sqlite:///{tmp_path / 'server.db'}"
    with Sandbox(tmp_path / "sandbox", database_url=url) as sandbox:
        yield sandbox


def _register_then_stop_relay(site: Site) -> Service:
    """The relay reports (an empty plan) once, then goes down."""
    relay = site.relay()
    _wait_for("the relay's first readiness report", site.readiness)
    relay.stop()
    return relay


def test_wave_opens_at_the_relay_site_once_its_relay_staged_the_bundle(
    sandbox: Sandbox,
) -> None:
    site = Site(sandbox, staging_wait=3600)
    try:
        stopped = _register_then_stop_relay(site)
        relayed = site.vehicle(RELAYED_VIN, stopped, RELAY_SITE)
        site.vehicle(DIRECT_VIN, site.server, "dealer-bonn")
        site.start_campaign(RELAYED_VIN, DIRECT_VIN)

        # The site without a relay is released when the campaign starts; the relay's site
        # waits, its first refusal recorded, while its relay is down (the wait is an hour).
        direct = _wait_for("the direct vehicle's release", lambda: site.released(DIRECT_VIN))
        assert direct.state == AssignmentState.PENDING
        waited = _wait_for("the staging gate's first refusal", site.staging_wait)
        assert site.assignment(RELAYED_VIN).state == AssignmentState.QUEUED

        # The relay comes back, stages the bundle from its plan and reports it ready.
        relay = site.relay(listen_like=stopped)
        sha = hashlib.sha256(IMAGE).hexdigest()
        ready = _wait_for("the relay's readiness", lambda: site.ready(sha))
        assert ready.blobs_total == 1
        released = _wait_for("the relayed vehicle's release", lambda: site.released(RELAYED_VIN))
        assert released.released_at is not None
        assert as_utc(released.released_at) >= as_utc(waited.first_asked_at)
        staged = sandbox.root / "relay-muc" / "cache" / "blobs" / f"{sha}.gateway-fw-3.0"
        assert staged.read_bytes() == IMAGE

        # The vehicle installs through the relay that staged the bundle.
        client = sandbox.client_once(relayed)
        output, _ = client.communicate(timeout=300)
        assert client.returncode == 0, output
        state = FileBootControl(relayed.slots).read_state()
        assert (state.committed, state.booted) == ("B", "B"), output
        assert (relayed.slots / "B.img").read_bytes()[: len(IMAGE)] == IMAGE
        relay.stop()
    finally:
        site.database.dispose()


def test_a_relay_that_never_becomes_ready_holds_its_site_only_for_the_staging_wait(
    sandbox: Sandbox,
) -> None:
    wait = timedelta(seconds=4)
    site = Site(sandbox, wait.total_seconds())
    try:
        stopped = _register_then_stop_relay(site)
        site.vehicle(RELAYED_VIN, stopped, RELAY_SITE)
        site.vehicle(DIRECT_VIN, site.server, "dealer-bonn")
        site.start_campaign(RELAYED_VIN, DIRECT_VIN)

        released = _wait_for("the relayed vehicle's release", lambda: site.released(RELAYED_VIN))
        waited = site.staging_wait()
        assert waited is not None, "the relay's site was never held"
        assert released.released_at is not None
        held_for = as_utc(released.released_at) - as_utc(waited.first_asked_at)
        assert held_for >= wait
        direct = site.assignment(DIRECT_VIN)
        assert direct.released_at is not None
        assert as_utc(direct.released_at) <= as_utc(waited.first_asked_at)
        # The relay never reported holding the bundle.
        readiness = site.readiness()
        assert readiness is not None
        assert readiness.cached_sha256 == ""
    finally:
        site.database.dispose()
