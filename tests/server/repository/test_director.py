"""The Director: per-vehicle signing, re-use of unchanged metadata, ngclient verification."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from tuf.api.exceptions import DownloadHTTPError
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp
from tuf.ngclient import FetcherInterface, Updater

from server.errors import InvalidArgumentError
from server.repository.director import Director, DirectorTarget, SignedDirectorMetadata

if TYPE_CHECKING:
    from tests.server.repository.conftest import Clock

VIN = "WVWZZZ1JZXW000001"
BOOT = DirectorTarget("boot-2.1", "b" * 64, 8192, ecu_serial="ECU-BOOT-1", hardware_id="boot-hw")
DOOR_LEFT = DirectorTarget("door-1.4", "d" * 64, 512, ecu_serial="ECU-DOOR-L", hardware_id="door")
DOOR_RIGHT = DirectorTarget("door-1.4", "d" * 64, 512, ecu_serial="ECU-DOOR-R", hardware_id="door")
BOOT_NEXT = DirectorTarget(
    "boot-2.2", "c" * 64, 8200, ecu_serial="ECU-BOOT-1", hardware_id="boot-hw"
)
_ROOT_FILE = re.compile(r"([0-9]+)\.root\.json")


class CheckInFetcher(FetcherInterface):
    """Serves a vehicle's metadata from a check-in answer and roots from the Director."""

    def __init__(self, director: Director, answer: SignedDirectorMetadata) -> None:
        self._roots = director
        self._files = {
            "timestamp.json": answer.timestamp,
            f"{answer.version}.snapshot.json": answer.snapshot,
            f"{answer.version}.targets.json": answer.targets,
        }

    def _fetch(self, url: str) -> Iterator[bytes]:
        name = url.rsplit("/", 1)[-1]
        data = self._files.get(name)
        root = _ROOT_FILE.fullmatch(name)
        if data is None and root is not None:
            data = self._roots.root_metadata(int(root.group(1)))
        if data is None:
            raise DownloadHTTPError(f"{name} not found", 404)
        return iter([data])


def verify(director: Director, answer: SignedDirectorMetadata, metadata_dir: Path) -> Updater:
    """Runs ngclient's full refresh of the vehicle's Director metadata."""
    metadata_dir.mkdir(parents=True, exist_ok=True)
    updater = Updater(
        str(metadata_dir),
        "https://director.invalid/metadata/",
        fetcher=CheckInFetcher(director, answer),
        bootstrap=director.root(),
    )
    updater.refresh()
    return updater


def signed(data: bytes) -> Any:
    return Metadata.from_bytes(data).signed


def test_initialize_creates_a_root_with_consistent_snapshots(director: Director) -> None:
    root = signed(director.root())
    assert isinstance(root, Root)
    assert (root.version, root.consistent_snapshot) == (1, True)
    assert director.root_metadata(1) == director.root()
    assert director.root_metadata(2) is None
    director.initialize()
    assert director.root_metadata(2) is None


def test_an_unchanged_assignment_returns_the_stored_bytes(director: Director) -> None:
    first = director.sign_for_vehicle(VIN, [BOOT, DOOR_LEFT])
    again = director.sign_for_vehicle(VIN, [DOOR_LEFT, BOOT])

    assert again == first
    assert first.version == 1


def test_a_new_assignment_bumps_the_version_of_all_three_roles(director: Director) -> None:
    director.sign_for_vehicle(VIN, [BOOT])
    answer = director.sign_for_vehicle(VIN, [BOOT_NEXT])

    assert answer.version == 2
    timestamp, snapshot, targets = (
        signed(answer.timestamp),
        signed(answer.snapshot),
        signed(answer.targets),
    )
    assert isinstance(timestamp, Timestamp)
    assert isinstance(snapshot, Snapshot)
    assert isinstance(targets, Targets)
    assert timestamp.version == snapshot.version == targets.version == 2
    assert timestamp.snapshot_meta.version == 2
    assert snapshot.meta["targets.json"].version == 2
    assert list(targets.targets) == ["boot-2.2"]


def test_metadata_close_to_expiry_is_signed_again(director: Director, clock: Clock) -> None:
    first = director.sign_for_vehicle(VIN, [BOOT])

    clock.advance(timedelta(hours=17))  # 7 h left: still more than a quarter of a day
    assert director.sign_for_vehicle(VIN, [BOOT]) == first

    clock.advance(timedelta(hours=2))  # 5 h left
    renewed = director.sign_for_vehicle(VIN, [BOOT])
    assert renewed.version == 2
    assert signed(renewed.timestamp).expires == (clock.now + timedelta(days=1)).replace(
        microsecond=0
    )


def test_vehicles_have_their_own_version_counters(director: Director) -> None:
    director.sign_for_vehicle(VIN, [BOOT])
    director.sign_for_vehicle(VIN, [BOOT_NEXT])
    other = director.sign_for_vehicle("WVWZZZ1JZXW000002", [BOOT])

    assert other.version == 1
    assert signed(other.targets).unrecognized_fields["custom"] == {"vin": "WVWZZZ1JZXW000002"}


def test_ngclient_verifies_the_vehicle_metadata_against_the_director_root(
    director: Director, tmp_path: Path
) -> None:
    metadata_dir = tmp_path / "vehicle" / "director"
    updater = verify(
        director, director.sign_for_vehicle(VIN, [BOOT, DOOR_LEFT, DOOR_RIGHT]), metadata_dir
    )

    boot = updater.get_targetinfo("boot-2.1")
    assert boot is not None
    assert (boot.length, boot.hashes) == (8192, {"sha256": "b" * 64})
    assert boot.custom == {"ecus": {"ECU-BOOT-1": {"hardware_id": "boot-hw"}}}
    door = updater.get_targetinfo("door-1.4")
    assert door is not None
    assert door.custom == {
        "ecus": {"ECU-DOOR-L": {"hardware_id": "door"}, "ECU-DOOR-R": {"hardware_id": "door"}}
    }
    trusted_targets = json.loads((metadata_dir / "targets.json").read_bytes())
    assert trusted_targets["signed"]["custom"] == {"vin": VIN}

    # The next assignment is accepted by the same vehicle: its version grew.
    updater = verify(director, director.sign_for_vehicle(VIN, [BOOT_NEXT]), metadata_dir)
    assert updater.get_targetinfo("boot-2.1") is None
    assert updater.get_targetinfo("boot-2.2") is not None


def test_nothing_to_install_still_names_the_vehicle(director: Director, tmp_path: Path) -> None:
    answer = director.sign_for_vehicle(VIN, [])
    verify(director, answer, tmp_path / "metadata")

    targets = signed(answer.targets)
    assert targets.targets == {}
    assert targets.unrecognized_fields["custom"] == {"vin": VIN}


@pytest.mark.parametrize(
    ("vin", "targets", "match"),
    [
        ("", [BOOT], "invalid VIN"),
        ("VIN/../1", [BOOT], "invalid VIN"),
        (VIN, [BOOT, BOOT_NEXT], "ECU ECU-BOOT-1 is given two images"),
        (
            VIN,
            [DOOR_LEFT, DirectorTarget("door-1.4", "e" * 64, 512, "ECU-DOOR-R", "door")],
            "two different contents",
        ),
        (VIN, [DirectorTarget("boot-2.1", "b" * 64, 1, "", "boot-hw")], "invalid ECU serial"),
        (VIN, [DirectorTarget("boot-2.1", "b" * 64, 1, "E1", "hw id")], "invalid hardware id"),
        (VIN, [DirectorTarget("../boot", "b" * 64, 1, "E1", "hw")], "invalid target name"),
    ],
)
def test_invalid_assignments_are_refused(
    director: Director, vin: str, targets: list[DirectorTarget], match: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        director.sign_for_vehicle(vin, targets)


def test_concurrent_first_check_ins_of_one_vehicle_agree(director: Director) -> None:
    barrier = threading.Barrier(4)
    answers: list[SignedDirectorMetadata] = []
    errors: list[BaseException] = []

    def check_in() -> None:
        barrier.wait()
        try:
            answers.append(director.sign_for_vehicle(VIN, [BOOT]))
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=check_in) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert {answer.version for answer in answers} == {1}
    assert len({answer.targets for answer in answers}) == 1
