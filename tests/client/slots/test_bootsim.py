"""The simulated bootloader: trying a slot, spending tries, falling back."""

from __future__ import annotations

from pathlib import Path

from client.images import Image
from client.slots import BootState, FileBootControl, SimulatedBootloader, next_boot

IMAGE = Image(target="app-1.1", length=10, sha256="ab" * 32, release_counter=2)


def test_without_a_try_the_committed_slot_boots() -> None:
    assert next_boot(BootState(committed="B", booted="A")) == BootState(committed="B", booted="B")


def test_a_try_spends_one_boot() -> None:
    state = next_boot(BootState(trying="B", tries_left=3))
    assert (state.booted, state.trying, state.tries_left) == ("B", "B", 2)


def test_commit_path(tmp_path: Path) -> None:
    control = FileBootControl(tmp_path)
    bootloader = SimulatedBootloader(control)
    control.set_next("B", 3, IMAGE)

    assert bootloader.reboot() == "B"
    control.mark_good()

    assert bootloader.reboot() == "B"
    assert control.read_state().committed == "B"


def test_health_failure_falls_back_to_the_old_slot(tmp_path: Path) -> None:
    control = FileBootControl(tmp_path)
    bootloader = SimulatedBootloader(control)
    control.set_next("B", 3, IMAGE)
    assert bootloader.reboot() == "B"

    control.mark_bad("B")

    assert bootloader.reboot() == "A"
    state = control.read_state()
    assert (state.committed, state.trying, state.images["B"]) == ("A", None, None)


def test_exhausted_tries_fall_back_to_the_committed_slot(tmp_path: Path) -> None:
    control = FileBootControl(tmp_path)
    bootloader = SimulatedBootloader(control)
    control.set_next("B", 2, IMAGE)

    booted = [bootloader.reboot() for _ in range(4)]

    assert booted == ["B", "B", "A", "A"]
    state = control.read_state()
    assert (state.committed, state.trying, state.tries_left) == ("A", None, 0)
