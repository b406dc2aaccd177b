"""Full update cycles against a real gRPC VehicleService and real TUF repositories."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from staffel.v1 import vehicle_pb2

from client.images import Image
from client.journal import Journal, JournalState, Phase, UpdateRecord
from client.main import main
from client.slots import FileBootControl, SimulatedBootloader, SlotInventory
from tests.client.support import (
    FACTORY_IMAGE,
    HARDWARE_ID,
    PRIMARY_SERIAL,
    VIN,
    Repositories,
    Vehicle,
    VehicleServer,
    image_bytes,
    write_config,
)

SUCCESS = ["CHECKED_IN", "DOWNLOADED", "VERIFIED", "INSTALLED", "REBOOTED", "HEALTHY", "COMMITTED"]


def _offer_update(repositories: Repositories, server: VehicleServer, data: bytes) -> None:
    target = repositories.image.add_image("app-1.1", data, release_counter=4)
    server.service.offer("7", repositories.director.metadata_for([target]))


def _set_health(
    vehicle: Vehicle, repositories: Repositories, server: VehicleServer, script: str
) -> None:
    write_config(
        vehicle.config_path,
        grpc_target=server.target,
        repo_url=repositories.url,
        health_command=["/bin/sh", "-c", script],
    )


def _boot_state(vehicle: Vehicle) -> dict[str, object]:
    state: dict[str, object] = json.loads((vehicle.slots_dir / "bootstate.json").read_text())
    return state


def _lines(output: str) -> list[str]:
    prefix = f"{VIN}: "
    assert all(line.startswith(prefix) for line in output.splitlines())
    return [line.removeprefix(prefix) for line in output.splitlines()]


def _run_once(vehicle: Vehicle) -> int:
    return main(["--config", str(vehicle.config_path), "--once"])


def test_an_offered_update_is_installed_booted_and_committed(
    vehicle: Vehicle,
    repositories: Repositories,
    vehicle_server: VehicleServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = image_bytes(1024 * 1024)
    _offer_update(repositories, vehicle_server, data)

    assert _run_once(vehicle) == 0

    service = vehicle_server.service
    assert service.kinds() == SUCCESS
    assert {event.assignment_id for event in service.events} == {"7"}
    assert len({event.event_id for event in service.events}) == len(SUCCESS)
    assert [event.slot for event in service.events] == ["", "B", "B", "B", "B", "B", "B"]
    assert vehicle.slot("B") == data
    assert vehicle.slot("A") == FACTORY_IMAGE
    state = _boot_state(vehicle)
    assert (state["committed"], state["booted"], state["trying"]) == ("B", "B", None)
    assert list((vehicle.state_dir / "outbox").iterdir()) == []
    assert _lines(capsys.readouterr().out) == [
        "checked in, update offered (assignment 7)",
        "downloaded app-1.1 (1.0 MiB)",
        "verified app-1.1 (Director and Image repository agree)",
        "installed into slot B",
        "rebooted into slot B",
        "healthy",
        "committed slot B",
        "reported 7 events",
    ]
    (check_in,) = service.check_ins
    assert check_in.vin == VIN
    assert len(check_in.nonce) == 32
    assert [
        (ecu.serial, ecu.hardware_id, ecu.installed_sha256, ecu.primary) for ecu in check_in.ecus
    ] == [(PRIMARY_SERIAL, HARDWARE_ID, "", True)]

    # The next check-in reports the committed image; nothing more to do.
    service.response = vehicle_pb2.CheckInResponse(
        nothing_to_do=vehicle_pb2.NothingToDo(), next_poll_seconds=120
    )
    assert _run_once(vehicle) == 0
    assert service.check_ins[1].ecus[0].installed_sha256 == hashlib.sha256(data).hexdigest()
    assert service.check_ins[1].nonce != check_in.nonce
    assert _lines(capsys.readouterr().out) == ["checked in, nothing to do (next check-in in 120 s)"]
    assert service.kinds() == SUCCESS


def test_a_failed_health_check_rolls_back_to_the_old_slot(
    vehicle: Vehicle,
    repositories: Repositories,
    vehicle_server: VehicleServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _set_health(vehicle, repositories, vehicle_server, "echo service app down; exit 1")
    data = image_bytes(300_000)
    _offer_update(repositories, vehicle_server, data)

    assert _run_once(vehicle) == 0

    service = vehicle_server.service
    assert service.kinds() == [
        "CHECKED_IN",
        "DOWNLOADED",
        "VERIFIED",
        "INSTALLED",
        "REBOOTED",
        "HEALTH_FAILED",
        "ROLLED_BACK",
    ]
    health_failed, rolled_back = service.events[-2:]
    assert health_failed.failure_type == vehicle_pb2.FAILURE_TYPE_HEALTH
    assert health_failed.detail == "exit status 1; last output:\nservice app down"
    assert (health_failed.slot, rolled_back.slot) == ("B", "A")
    assert vehicle.slot("A") == FACTORY_IMAGE
    state = _boot_state(vehicle)
    assert (state["committed"], state["booted"], state["trying"]) == ("A", "A", None)
    inventory = json.loads((vehicle.slots_dir / "slots.json").read_text())
    assert inventory == {"A": None, "B": None}
    assert _lines(capsys.readouterr().out)[-4:] == [
        "rebooted into slot B",
        "health failed: exit status 1",
        "rolled back to slot A",
        "reported 7 events",
    ]


def test_a_tampered_blob_fails_verification_and_changes_nothing(
    vehicle: Vehicle,
    repositories: Repositories,
    vehicle_server: VehicleServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = image_bytes(50_000)
    _offer_update(repositories, vehicle_server, data)
    sha256 = hashlib.sha256(data).hexdigest()
    repositories.image.store_blob("app-1.1", image_bytes(50_000, seed=b"evil"), sha256=sha256)

    assert _run_once(vehicle) == 0

    service = vehicle_server.service
    assert service.kinds() == ["CHECKED_IN", "FAILED"]
    failed = service.events[-1]
    assert failed.failure_type == vehicle_pb2.FAILURE_TYPE_VERIFICATION
    assert f"signed {sha256}; the image was refused" in failed.detail
    assert not (vehicle.slots_dir / "bootstate.json").exists()
    assert vehicle.slot("A") == FACTORY_IMAGE
    assert "update failed (verification): app-1.1: the image's SHA-256" in capsys.readouterr().out


def test_events_stay_queued_until_the_server_acknowledges_them(
    vehicle: Vehicle, repositories: Repositories, vehicle_server: VehicleServer
) -> None:
    _offer_update(repositories, vehicle_server, image_bytes(10_000))
    vehicle_server.service.refuse_reports = True

    assert _run_once(vehicle) == 1
    assert len(list((vehicle.state_dir / "outbox").iterdir())) == len(SUCCESS)
    assert vehicle_server.service.events == []

    vehicle_server.service.refuse_reports = False
    vehicle_server.service.response = vehicle_pb2.CheckInResponse(
        nothing_to_do=vehicle_pb2.NothingToDo(), next_poll_seconds=60
    )
    assert _run_once(vehicle) == 0
    assert vehicle_server.service.kinds() == SUCCESS
    assert list((vehicle.state_dir / "outbox").iterdir()) == []


def test_a_power_cut_during_the_health_check_resumes_there(
    vehicle: Vehicle,
    repositories: Repositories,
    vehicle_server: VehicleServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The health command SIGKILLs the client process that runs it.
    _set_health(vehicle, repositories, vehicle_server, "kill -9 $PPID; sleep 5")
    data = image_bytes(20_000)
    _offer_update(repositories, vehicle_server, data)
    client = Path(sys.executable).with_name("staffel-client")

    killed = subprocess.run(
        [str(client), "--config", str(vehicle.config_path), "--once"],
        capture_output=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )

    assert killed.returncode == -9
    assert vehicle_server.service.events == []
    journal = json.loads((vehicle.state_dir / "journal.json").read_text())
    assert journal["update"]["phase"] == "health"

    _set_health(vehicle, repositories, vehicle_server, "exit 0")
    assert _run_once(vehicle) == 0

    assert vehicle_server.service.kinds() == SUCCESS
    assert vehicle.slot("B") == data
    assert _boot_state(vehicle)["committed"] == "B"
    assert _lines(capsys.readouterr().out) == [
        "reported 5 events",
        "resuming assignment 7 at step health",
        "healthy",
        "committed slot B",
        "reported 2 events",
    ]


def test_a_slot_that_never_booted_is_reported_rolled_back_and_never_committed(
    vehicle: Vehicle,
    repositories: Repositories,
    vehicle_server: VehicleServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Power cuts during the reboot into B used up every try: the journal still says
    # "reboot", the boot state has no try left, so the bootloader falls back to A.
    image = Image(target="app-1.1", length=3, sha256="ab" * 32, release_counter=4)
    boot_control = FileBootControl(vehicle.slots_dir)
    SlotInventory(vehicle.slots_dir).record("B", image)
    boot_control.set_next("B", 1)
    bootloader = SimulatedBootloader(boot_control, vehicle.slots_dir)
    boot_id = bootloader.boot_id()
    bootloader.reboot()  # B comes up and spends its only try: power cut
    bootloader.reboot()  # no try left: the bootloader falls back to A
    record = UpdateRecord(
        assignment_id="7",
        attempt=str(uuid.uuid4()),
        phase=Phase.REBOOT,
        image=image,
        slot="B",
        boot_id=boot_id,
    )
    Journal(vehicle.state_dir / "journal.json").write(JournalState(update=record))

    assert _run_once(vehicle) == 0

    assert vehicle_server.service.kinds() == ["REBOOTED", "ROLLED_BACK"]
    rebooted, rolled_back = vehicle_server.service.events
    assert (rebooted.slot, rolled_back.slot) == ("A", "A")
    assert rolled_back.failure_type == vehicle_pb2.FAILURE_TYPE_ROLLED_BACK
    assert "slot B did not boot" in rolled_back.detail
    state = _boot_state(vehicle)
    assert (state["committed"], state["booted"], state["trying"]) == ("A", "A", None)
    assert _lines(capsys.readouterr().out) == [
        "resuming assignment 7 at step reboot",
        "rebooted into slot A",
        "rolled back to slot A",
        "reported 2 events",
    ]
    assert Journal(vehicle.state_dir / "journal.json").read() == JournalState()
