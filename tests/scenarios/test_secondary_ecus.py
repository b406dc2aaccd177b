"""A gateway and two secondary ECUs: the vehicle commits only when all three are healthy.

Real processes on loopback: the central server, a relay, each vehicle's gateway
(``staffel-client --once``, the Uptane primary) and two secondaries per vehicle
(``python -m client.secondary``, standing in for ECUs on the vehicle bus). The Director
signs one target per ECU by hardware id; each secondary verifies it on its own (partial
verification), installs into its own A/B pair and boots it on trial. A good update commits
on all three ECUs; a health failure on one secondary rolls all three back.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from client.slots import FileBootControl, SlotInventory
from server.sandbox import Sandbox, Service, VehicleSetup, stream_lines
from tests.scenarios.installation import FACTORY_IMAGE, HARDWARE_ID, MODEL

GOOD_VIN = "WSF00000000000071"
BAD_VIN = "WSF00000000000072"
BODY_HARDWARE_ID = "body-y1"
GATEWAY_IMAGE = os.urandom(1024 * 1024 + 17)
BODY_IMAGE = os.urandom(512 * 1024 + 5)
FAILING_HEALTH = ("/bin/sh", "-c", "echo 'door controller self-test failed' >&2; exit 1")


@dataclass
class Ecu:
    """One ECU of a test vehicle: its serial and the folder of its A/B slots."""

    serial: str
    slots: Path

    def state(self) -> tuple[str, str, str | None]:
        """(committed, booted, trying)."""
        state = FileBootControl(self.slots).read_state()
        return state.committed, state.booted, state.trying


def _toml_list(parts: tuple[str, ...]) -> str:
    return "[" + ", ".join(json.dumps(part) for part in parts) + "]"


def _secondary(
    sandbox: Sandbox, vehicle: Path, vin: str, serial: str, health: tuple[str, ...]
) -> tuple[Ecu, Service]:
    home = vehicle / serial
    (home / "slots").mkdir(parents=True)
    (home / "slots" / "A.img").write_bytes(FACTORY_IMAGE)
    (home / "director-root.json").write_bytes((vehicle / "director-root.json").read_bytes())
    # The ECU's key, made at provisioning (its public key is registered), goes onto the ECU.
    (home / "state").mkdir(mode=0o700)
    shutil.copy2(vehicle / "ecu-keys" / f"{serial}.pem", home / "state" / "ecu-key.pem")
    config = home / "secondary.toml"
    config.write_text(
        f'vin = "{vin}"\nserial = "{serial}"\nhardware_id = "{BODY_HARDWARE_ID}"\n'
        'listen = "127.0.0.1:0"\nstate_dir = "state"\ndirector_root = "director-root.json"\n\n'
        '[slots]\nbackend = "file"\ndirectory = "slots"\n\n'
        f"[health]\ncommand = {_toml_list(health)}\ntimeout_seconds = 30\n"
    )
    service = sandbox.start(
        f"{vin}-{serial}", sys.executable, "-m", "client.secondary", "--config", str(config)
    )
    return Ecu(serial, home / "slots"), service


def _vehicle(
    sandbox: Sandbox, server: Service, relay: Service, vin: str, bad_health: bool
) -> tuple[VehicleSetup, list[Ecu]]:
    home = sandbox.root / "vehicles" / vin
    gateway, first, second = f"gw-{vin[-4:]}", f"door-{vin[-4:]}", f"seat-{vin[-4:]}"
    sandbox.staffel(
        server, "fleet", "provision", "--vin", vin, "--model", MODEL,
        "--ecu", f"{gateway}:{HARDWARE_ID}:primary", "--ecu", f"{first}:{BODY_HARDWARE_ID}",
        "--ecu", f"{second}:{BODY_HARDWARE_ID}", "--out", str(home),
    )  # fmt: skip
    ecus, entries = [], ""
    second_health = FAILING_HEALTH if bad_health else ("/bin/true",)
    for serial, health in ((first, ("/bin/true",)), (second, second_health)):
        ecu, service = _secondary(sandbox, home, vin, serial, health)
        ecus.append(ecu)
        entries += (
            f'\n[[ecus]]\nserial = "{serial}"\nhardware_id = "{BODY_HARDWARE_ID}"\n'
            f'address = "{service.grpc}"\n'
        )
    vehicle = VehicleSetup(vin=vin, directory=home, serial=gateway, hardware_id=HARDWARE_ID)
    vehicle.slots.mkdir()
    (vehicle.slots / "A.img").write_bytes(FACTORY_IMAGE)
    vehicle.config.write_text(
        f'vin = "{vin}"\ngrpc_target = "{relay.grpc}"\nrepo_url = "{relay.http}"\n'
        'state_dir = "state"\nimage_root = "image-root.json"\n'
        'director_root = "director-root.json"\npoll_interval_seconds = 10\n\n'
        f'[[ecus]]\nserial = "{gateway}"\nhardware_id = "{HARDWARE_ID}"\nprimary = true\n'
        f'key_file = "ecu-keys/{gateway}.pem"\n'
        f'{entries}\n[slots]\nbackend = "file"\ndirectory = "slots"\n\n'
        '[health]\ncommand = ["/bin/true"]\n'
    )
    return vehicle, [Ecu(gateway, vehicle.slots), *ecus]


def test_all_three_ecus_commit_or_all_three_roll_back(tmp_path: Path) -> None:
    with Sandbox(tmp_path / "sandbox", database_url=f"sqlite:///{tmp_path / 's.db'}") as sandbox:
        server = sandbox.start_server()
        sandbox.make_people(server)
        relay = sandbox.start_relay(server)
        for name, data, hardware_id in (
            ("gateway-fw", GATEWAY_IMAGE, HARDWARE_ID),
            ("body-fw", BODY_IMAGE, BODY_HARDWARE_ID),
        ):
            path = tmp_path / f"{name}.bin"
            path.write_bytes(data)
            sandbox.staffel(
                server, "image", "upload", str(path), "--name", name, "--version", "2.0",
                "--hardware-id", hardware_id, "--release-counter", "2",
            )  # fmt: skip
        bundle = json.loads(
            sandbox.staffel(
                server, "--json", "bundle", "create", "--name", "multi-ecu", "--model", MODEL,
                "gateway-fw-2.0", "body-fw-2.0",
            )
        )  # fmt: skip
        good, good_ecus = _vehicle(sandbox, server, relay, GOOD_VIN, bad_health=False)
        bad, bad_ecus = _vehicle(sandbox, server, relay, BAD_VIN, bad_health=True)
        sandbox.start_campaign(
            server, "--name", "multi-ecu", "--bundle", bundle["bundleId"],
            "--max-failure-percent", "100", "--vin", GOOD_VIN, "--vin", BAD_VIN,
        )  # fmt: skip
        clients = [sandbox.client_once(good), sandbox.client_once(bad)]
        output = "\n".join(stream_lines(clients))
        assert [client.returncode for client in clients] == [0, 0], output
        secondary_logs = {
            service.name: service.log_path.read_text() for service in sandbox.services
        }

    # The good vehicle: all three ECUs committed slot B, each holding its own image.
    for ecu in good_ecus:
        assert ecu.state() == ("B", "B", None), (ecu.serial, output)
    assert (good_ecus[0].slots / "B.img").read_bytes()[: len(GATEWAY_IMAGE)] == GATEWAY_IMAGE
    for ecu in good_ecus[1:]:
        assert (ecu.slots / "B.img").read_bytes() == BODY_IMAGE
        held = SlotInventory(ecu.slots).read()["B"]
        assert held is not None and held.target == "body-fw-2.0"
    assert f"{GOOD_VIN}: committed slot B" in output

    # The bad vehicle: one secondary failed its health check; all three are back on A.
    for ecu in bad_ecus:
        assert ecu.state() == ("A", "A", None), (ecu.serial, output)
        assert (ecu.slots / "A.img").read_bytes() == FACTORY_IMAGE
    assert "door controller self-test failed" in output
    assert f"{BAD_VIN}: rolled back to slot A" in output

    # Each gateway wrote a vehicle version manifest holding every ECU's signed report.
    manifest = json.loads((good.directory / "state" / "manifest.json").read_text())
    serials = [r["signed"]["ecu_serial"] for r in manifest["signed"]["ecu_version_reports"]]
    assert serials == [ecu.serial for ecu in good_ecus]
    for log in secondary_logs.values():
        assert "Traceback" not in log, log
