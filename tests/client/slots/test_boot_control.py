"""One suite for every boot-control backend: file, grub (grub-editenv), uboot (fw_setenv)."""

from __future__ import annotations

import pytest

from client.errors import StateError
from client.slots import BootControl, BootState, SimulatedBootloader

FACTORY = BootState(committed="A", booted="A", trying=None, tries_left=0)


def _bootloader(
    control: BootControl, tmp_path_factory: pytest.TempPathFactory
) -> SimulatedBootloader:
    return SimulatedBootloader(control, tmp_path_factory.mktemp("machine"))


def test_factory_state(boot_control: BootControl) -> None:
    assert boot_control.read_state() == FACTORY


def test_set_next_is_durable_and_leaves_the_active_slot(boot_control: BootControl) -> None:
    boot_control.set_next("B", 3)

    assert boot_control.read_state() == BootState(
        committed="A", booted="A", trying="B", tries_left=3
    )


def test_the_active_slot_cannot_be_tried_or_marked_bad(boot_control: BootControl) -> None:
    with pytest.raises(StateError, match="slot A is the active slot"):
        boot_control.set_next("A", 3)
    with pytest.raises(StateError, match="slot A is the active slot and cannot be marked bad"):
        boot_control.mark_bad("A")
    assert boot_control.read_state() == FACTORY


def test_a_good_slot_is_booted_then_committed(
    boot_control: BootControl, tmp_path_factory: pytest.TempPathFactory
) -> None:
    bootloader = _bootloader(boot_control, tmp_path_factory)
    boot_control.set_next("B", 3)

    assert bootloader.reboot() == "B"
    assert boot_control.read_state() == BootState(
        committed="A", booted="B", trying="B", tries_left=2
    )
    boot_control.mark_good()

    assert boot_control.read_state() == BootState(committed="B", booted="B")
    assert bootloader.reboot() == "B"
    # The next update goes into A, the slot now inactive.
    boot_control.set_next("A", 2)
    assert boot_control.read_state().trying == "A"


def test_spent_tries_fall_back_to_the_committed_slot(
    boot_control: BootControl, tmp_path_factory: pytest.TempPathFactory
) -> None:
    bootloader = _bootloader(boot_control, tmp_path_factory)
    boot_control.set_next("B", 2)

    assert [bootloader.reboot() for _ in range(3)] == ["B", "B", "A"]
    assert boot_control.read_state() == FACTORY
    with pytest.raises(StateError, match="a slot is committed only after it booted"):
        boot_control.set_next("B", 1)
        boot_control.mark_good()


def test_a_bad_slot_is_no_longer_tried(
    boot_control: BootControl, tmp_path_factory: pytest.TempPathFactory
) -> None:
    bootloader = _bootloader(boot_control, tmp_path_factory)
    boot_control.set_next("B", 3)
    assert bootloader.reboot() == "B"

    boot_control.mark_bad("B")
    boot_control.mark_bad("B")  # repeating a step after a power cut changes nothing

    assert boot_control.read_state() == BootState(committed="A", booted="B")
    assert bootloader.reboot() == "A"
    assert boot_control.read_state() == FACTORY


def test_every_boot_has_a_new_boot_id(
    boot_control: BootControl, tmp_path_factory: pytest.TempPathFactory
) -> None:
    bootloader = _bootloader(boot_control, tmp_path_factory)
    assert bootloader.boot_id() == ""
    bootloader.reboot()
    first = bootloader.boot_id()
    bootloader.reboot()
    assert first and bootloader.boot_id() not in ("", first)
