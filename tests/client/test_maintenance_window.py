"""The offer's maintenance window: download any time, install only inside the window."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from client.main import main
from tests.client.support import Repositories, Vehicle, VehicleServer, image_bytes


def _window(server: VehicleServer, opens: datetime, closes: datetime) -> None:
    not_before, not_after = Timestamp(), Timestamp()
    not_before.FromDatetime(opens)
    not_after.FromDatetime(closes)
    server.service.response.update.install_not_before.CopyFrom(not_before)
    server.service.response.update.install_not_after.CopyFrom(not_after)


def test_the_install_waits_for_the_window_and_the_wait_is_journaled(
    vehicle: Vehicle,
    repositories: Repositories,
    vehicle_server: VehicleServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = image_bytes(100_000)
    target = repositories.image.add_image("app-1.1", data, release_counter=4)
    vehicle_server.service.offer("9", repositories.director.metadata_for([target]))
    now = datetime.now(UTC).replace(microsecond=0)
    _window(vehicle_server, now + timedelta(hours=1), now + timedelta(hours=2))

    assert main(["--config", str(vehicle.config_path), "--once"]) == 0

    # Downloaded and verified outside the window, but the boot state is untouched.
    assert vehicle_server.service.kinds() == ["CHECKED_IN", "DOWNLOADED", "VERIFIED"]
    assert vehicle.slot("B") == data
    assert not (vehicle.slots_dir / "bootstate.json").exists()
    journal = json.loads((vehicle.state_dir / "journal.json").read_text())
    assert journal["update"]["phase"] == "install"
    assert journal["update"]["install_not_before"] == (now + timedelta(hours=1)).isoformat()
    assert "holding the install of app-1.1 until the maintenance window" in capsys.readouterr().out

    # The server moves the window to now: the next check-in installs without a download.
    _window(vehicle_server, now - timedelta(minutes=1), now + timedelta(hours=1))
    assert main(["--config", str(vehicle.config_path), "--once"]) == 0

    assert vehicle_server.service.kinds()[3:] == ["INSTALLED", "REBOOTED", "HEALTHY", "COMMITTED"]
    assert json.loads((vehicle.slots_dir / "bootstate.json").read_text())["committed"] == "B"
    assert "downloaded" not in capsys.readouterr().out
