"""Offline installs from a folder: verified like the network path, attacks refused alike."""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from client.main import main
from client.uptane import DirectorMetadata
from tests.client.support import FACTORY_IMAGE, Repositories, Vehicle, image_bytes


def _folder(tmp_path: Path, repositories: Repositories, director: DirectorMetadata) -> Path:
    """What a workshop laptop would carry: both repositories and the vehicle's offer."""
    served = repositories.image.metadata_dir.parents[1]
    folder = tmp_path / "usb"
    shutil.copytree(served, folder)
    offer = folder / "director" / "offer"
    offer.mkdir()
    (offer / "timestamp.json").write_bytes(director.timestamp)
    (offer / "snapshot.json").write_bytes(director.snapshot)
    (offer / "targets.json").write_bytes(director.targets)
    (offer / "assignment").write_text("workshop-1")
    return folder


def _install(vehicle: Vehicle, folder: Path) -> int:
    return main(["--config", str(vehicle.config_path), "install", "--offline", str(folder)])


def _queued_kinds(vehicle: Vehicle) -> list[str]:
    outbox = sorted((vehicle.state_dir / "outbox").iterdir())
    return [json.loads(path.read_text())["kind"] for path in outbox]


def test_an_offline_update_is_verified_installed_and_reported_later(
    vehicle: Vehicle, repositories: Repositories, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = image_bytes(200_000)
    target = repositories.image.add_image("app-1.1", data, release_counter=4)
    folder = _folder(tmp_path, repositories, repositories.director.metadata_for([target]))

    assert _install(vehicle, folder) == 0

    assert vehicle.slot("B") == data
    assert json.loads((vehicle.slots_dir / "bootstate.json").read_text())["committed"] == "B"
    assert _queued_kinds(vehicle) == [
        "CHECKED_IN", "DOWNLOADED", "VERIFIED", "INSTALLED", "REBOOTED", "HEALTHY", "COMMITTED",
    ]  # fmt: skip
    assert main(["--config", str(vehicle.config_path), "status"]) == 0
    out = capsys.readouterr().out
    assert "verified app-1.1 (Director and Image repository agree)" in out
    assert f"slot B: app-1.1 (sha256 {hashlib.sha256(data).hexdigest()[:12]}" in out
    assert "7 events queued" in out


def test_an_offline_folder_with_a_tampered_image_is_refused(
    vehicle: Vehicle, repositories: Repositories, tmp_path: Path
) -> None:
    data = image_bytes(50_000)
    target = repositories.image.add_image("app-1.1", data, release_counter=4)
    folder = _folder(tmp_path, repositories, repositories.director.metadata_for([target]))
    blob = folder / "image" / "targets" / f"{target.hashes['sha256']}.app-1.1"
    blob.write_bytes(image_bytes(50_000, seed=b"evil"))  # arbitrary software

    assert _install(vehicle, folder) == 0

    assert _queued_kinds(vehicle) == ["CHECKED_IN", "FAILED"]
    assert not (vehicle.slots_dir / "bootstate.json").exists()
    assert vehicle.slot("A") == FACTORY_IMAGE


def test_an_offline_folder_with_expired_director_metadata_is_refused(
    vehicle: Vehicle, repositories: Repositories, tmp_path: Path
) -> None:
    target = repositories.image.add_image("app-1.1", image_bytes(1000), release_counter=4)
    expired = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    director = repositories.director.metadata_for([target], expires=expired)  # freeze attack

    assert _install(vehicle, _folder(tmp_path, repositories, director)) == 0

    assert _queued_kinds(vehicle) == ["CHECKED_IN", "FAILED"]
    failed = json.loads(sorted((vehicle.state_dir / "outbox").iterdir())[-1].read_text())
    assert failed["failure_type"] == "VERIFICATION"
    assert "expired" in failed["detail"]
    assert vehicle.slot("A") == FACTORY_IMAGE


def test_a_folder_that_is_not_an_update_is_named(vehicle: Vehicle, tmp_path: Path) -> None:
    assert _install(vehicle, tmp_path) == 1
