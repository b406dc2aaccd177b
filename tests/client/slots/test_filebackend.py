"""The ``file`` boot-control backend: factory state, atomic state changes, guards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client.errors import StateError
from client.images import Image
from client.slots import BootState, FileBootControl, SimulatedBootloader

IMAGE = Image(target="app-1.1", length=10, sha256="ab" * 32, release_counter=2)


def test_factory_state_when_nothing_was_written(tmp_path: Path) -> None:
    state = FileBootControl(tmp_path / "slots").read_state()

    assert state == BootState(committed="A", booted="A", trying=None, tries_left=0)
    assert state.images == {"A": None, "B": None}
    assert state.active_image is None


def test_set_next_records_image_and_try_in_one_durable_write(tmp_path: Path) -> None:
    control = FileBootControl(tmp_path)
    control.set_next("B", 3, IMAGE)

    reopened = FileBootControl(tmp_path).read_state()
    assert (reopened.trying, reopened.tries_left, reopened.images["B"]) == ("B", 3, IMAGE)
    assert reopened.committed == "A"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bootstate.json"]


def test_the_active_slot_cannot_be_tried_or_marked_bad(tmp_path: Path) -> None:
    control = FileBootControl(tmp_path)
    with pytest.raises(StateError, match="slot A is the active slot"):
        control.set_next("A", 3, IMAGE)
    with pytest.raises(StateError, match="slot A is the active slot and cannot be marked bad"):
        control.mark_bad("A")


def test_mark_good_commits_only_a_slot_that_booted(tmp_path: Path) -> None:
    control = FileBootControl(tmp_path)
    control.set_next("B", 3, IMAGE)
    with pytest.raises(StateError, match="slot B is being tried but slot A is booted"):
        control.mark_good()

    SimulatedBootloader(control).reboot()
    control.mark_good()
    control.mark_good()  # repeating the step after a power cut changes nothing

    state = control.read_state()
    assert (state.committed, state.booted, state.trying, state.active_image) == (
        "B",
        "B",
        None,
        IMAGE,
    )


def test_mark_bad_stops_the_try_and_forgets_the_image(tmp_path: Path) -> None:
    control = FileBootControl(tmp_path)
    control.set_next("B", 3, IMAGE)
    control.mark_bad("B")

    state = control.read_state()
    assert (state.committed, state.trying, state.tries_left, state.images["B"]) == (
        "A",
        None,
        0,
        None,
    )


def test_an_invalid_state_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "bootstate.json").write_text(json.dumps({"committed": "C"}))
    with pytest.raises(StateError, match=r"boot state .* is invalid"):
        FileBootControl(tmp_path).read_state()


def test_slot_paths(tmp_path: Path) -> None:
    assert FileBootControl(tmp_path).slot_path("B") == str(tmp_path / "B.img")
