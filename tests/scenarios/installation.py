"""An installation for scenario tests: server, relay, one published image, a bundle."""

from __future__ import annotations

import json
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
        """Creates and starts a campaign of the bundle for these vehicles; returns its id."""
        arguments = [
            "--json",
            "campaign",
            "create",
            "--name",
            "scenario",
            "--bundle",
            self.bundle_id,
        ]
        for vin in vins:
            arguments += ["--vin", vin]
        campaign_id: str = json.loads(self.sandbox.staffel(self.server, *arguments))["campaignId"]
        self.sandbox.staffel(self.server, "campaign", "start", campaign_id)
        return campaign_id

    def run_clients(self, *vehicles: VehicleSetup) -> tuple[list[int], list[str]]:
        """One update cycle on each vehicle, concurrently; their exit codes and output."""
        clients = [self.sandbox.client_once(v) for v in vehicles]
        lines = list(stream_lines(clients))
        return [c.returncode for c in clients], lines

    def campaign(self, campaign_id: str) -> dict[str, object]:
        """The campaign as the server reports it (protobuf JSON)."""
        answer: dict[str, object] = json.loads(
            self.sandbox.staffel(self.server, "--json", "campaign", "status", campaign_id)
        )
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
