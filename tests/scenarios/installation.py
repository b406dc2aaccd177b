"""An installation for scenario tests: server, relay, one published image, a bundle."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from sqlmodel import col, select

from server.campaigns.models import VehicleEventRecord
from server.sandbox import Sandbox, Service, VehicleSetup, stream_lines
from server.store import Database

MODEL = "test-sedan"
HARDWARE_ID = "gateway-x1"
IMAGE_NAME = "gateway-fw"
IMAGE_VERSION = "2.0"
IMAGE_SIZE = 3 * 1024 * 1024 + 123  # bytes; not a multiple of any chunk size on purpose
FACTORY_IMAGE = b"factory image of slot A\n" * 4096


@dataclass
class Installation:
    """What a scenario runs against."""

    sandbox: Sandbox
    server: Service
    relay: Service
    database_url: str
    image: bytes
    target_name: str
    bundle_id: str

    def vehicle(
        self, vin: str, *, health_command: tuple[str, ...] = ("/bin/true",)
    ) -> VehicleSetup:
        """A provisioned vehicle behind the relay, with a factory image in slot A."""
        vehicle = self.sandbox.provision_vehicle(
            self.server, self.relay, vin=vin, model=MODEL, hardware_id=HARDWARE_ID,
            health_command=health_command,
        )  # fmt: skip
        (vehicle.slots / "A.img").write_bytes(FACTORY_IMAGE)
        return vehicle

    def start_campaign(self, *vins: str) -> str:
        """Creates, approves and starts a campaign of the bundle for these vehicles."""
        # Scenarios judge each vehicle, not the rollout: no failure pauses the campaign.
        arguments = [
            "--name", "scenario", "--bundle", self.bundle_id, "--max-failure-percent", "100",
        ]  # fmt: skip
        for vin in vins:
            arguments += ["--vin", vin]
        return self.sandbox.start_campaign(self.server, *arguments)

    def run_clients(self, *vehicles: VehicleSetup) -> tuple[list[int], list[str]]:
        """One update cycle on each vehicle, concurrently; their exit codes and output."""
        clients = [self.sandbox.client_once(v) for v in vehicles]
        lines = list(stream_lines(clients))
        return [c.returncode for c in clients], lines

    def campaign(self, campaign_id: str, *, until_final: bool = True) -> dict[str, object]:
        """The campaign as the server reports it (protobuf JSON).

        The engine settles outcomes on its next step (every second), so by default this
        waits up to 10 s for the campaign to complete.
        """
        answer: dict[str, object] = {}
        for _ in range(50):
            answer = json.loads(
                self.sandbox.staffel(self.server, "--json", "campaign", "status", campaign_id)
            )
            if not until_final or answer.get("state") == "CAMPAIGN_STATE_COMPLETED":
                break
            time.sleep(0.2)
        return answer

    def events(self, vin: str) -> list[VehicleEventRecord]:
        """The events the server stored for a vehicle, in the order they happened."""
        database = Database.from_url(self.database_url)
        try:
            with database.session() as session:
                return list(
                    session.exec(
                        select(VehicleEventRecord)
                        .where(VehicleEventRecord.vin == vin)
                        .order_by(col(VehicleEventRecord.occurred_at))
                    ).all()
                )
        finally:
            database.dispose()
