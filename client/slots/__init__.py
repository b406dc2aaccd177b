"""A/B boot control: the boot state, its backends and the simulated bootloader."""

from __future__ import annotations

from client.slots.bootsim import SimulatedBootloader, next_boot
from client.slots.filebackend import FileBootControl
from client.slots.state import SLOTS, BootControl, Bootloader, BootState, Slot, other_slot

__all__ = [
    "SLOTS",
    "BootControl",
    "BootState",
    "Bootloader",
    "FileBootControl",
    "SimulatedBootloader",
    "Slot",
    "next_boot",
    "other_slot",
]
